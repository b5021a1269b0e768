#!/bin/sh
# camtester's container entry point: the first argument picks the role.
#
#   api                 gunicorn serving the HTTP API on $CAMTESTER_API_BIND
#   worker [celery ..]  a Celery worker; pass its queues: worker -Q local.probe
#   flower [flower ..]  Flower behind basic auth ($FLOWER_BASIC_AUTH=user:password)
#   anything else       run as a command (e.g. camtester token, sh)
set -eu

# prometheus-client's multiprocess mode, so that one scrape adds up every
# gunicorn worker or prefork child; files of an earlier start would add that
# run's counts to this one's, so the directory starts empty.
fresh_metrics_dir() {
    PROMETHEUS_MULTIPROC_DIR="${PROMETHEUS_MULTIPROC_DIR:-/tmp/camtester-metrics}"
    export PROMETHEUS_MULTIPROC_DIR
    rm -rf "$PROMETHEUS_MULTIPROC_DIR"
    mkdir -p "$PROMETHEUS_MULTIPROC_DIR"
}

# Start-up banners go to stdout as plain text; a JSON log has none of them.
quiet_if_json() {
    if [ "${CAMTESTER_LOG_FORMAT:-text}" = json ]; then
        echo --quiet
    fi
}

role="${1:-api}"
if [ "$#" -gt 0 ]; then
    shift
fi

case "$role" in
    api)
        fresh_metrics_dir
        exec gunicorn \
            --bind "${CAMTESTER_API_BIND:-0.0.0.0:8000}" \
            --workers "${CAMTESTER_API_WORKERS:-2}" \
            --threads "${CAMTESTER_API_THREADS:-4}" \
            --logger-class camtester.logs.GunicornLogger \
            --no-control-socket \
            "$@" wsgi:app
        ;;
    worker)
        fresh_metrics_dir
        exec celery -A camtester $(quiet_if_json) worker \
            -l "${CAMTESTER_LOG_LEVEL:-INFO}" "$@"
        ;;
    flower)
        if [ -z "${FLOWER_BASIC_AUTH:-}" ]; then
            echo "camtester-entrypoint: set FLOWER_BASIC_AUTH=user:password;" \
                "Flower shows every task and can start new ones" >&2
            exit 64
        fi
        exec celery -A camtester $(quiet_if_json) flower \
            --conf="${CAMTESTER_FLOWER_CONF:-/app/flowerconfig.py}" \
            --address="${FLOWER_ADDRESS:-0.0.0.0}" --port="${FLOWER_PORT:-5555}" "$@"
        ;;
    *)
        exec "$role" "$@"
        ;;
esac
