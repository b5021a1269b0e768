"""The `camtester` command: one measurement here, tokens, calibration, services.

Built on Flask's CLI, so `camtester run` and `camtester routes` work as for any
Flask app; the commands below are camtester's own.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import click
from flask.cli import FlaskGroup

from camtester.errors import CamtesterError, InvalidInput, SetupError
from camtester.logs import configure_logging
from camtester.settings import get_settings


def _create_app() -> Any:
    from camtester.api import create_app

    return create_app()


@click.group(cls=FlaskGroup, create_app=_create_app, add_version_option=False)
def main() -> None:
    """camtester: tests IP cameras over ICMP and ffmpeg."""
    # Before Flask makes the app: a root handler stops it adding its own, which
    # would print every camtester line twice.
    level = os.environ.get("CAMTESTER_LOG_LEVEL", "WARNING")
    configure_logging(get_settings().log_format, level)


def _measure_and_print(task_type: str, target: str, payload: dict[str, Any]) -> None:
    """Validate like the API does, measure in this process, print the result."""
    from camtester.measure import run_measurement
    from camtester.spec import validate_measurement

    settings = get_settings()
    local_file = task_type != "ping" and Path(target).is_file()
    if task_type != "ping" and not local_file and "://" not in target:
        raise click.UsageError(f"SOURCE {target!r} is no stream URI and no file here")
    target_key = "host" if task_type == "ping" else "uri"
    # The API never reads files; here the user names a file of their own. Its
    # options are checked as for a stream, then the path becomes the target.
    checked_target = "rtsp://localhost/file" if local_file else target

    try:
        measurement = validate_measurement(
            task_type, {**payload, target_key: checked_target}, settings, "option"
        )
    except InvalidInput as exc:
        raise click.UsageError(_command_terms(str(exc))) from exc
    if local_file:
        measurement["target"] = str(Path(target).resolve())

    try:
        result, _ = run_measurement(measurement, settings)
    except SetupError as exc:
        raise click.ClickException(f"worker setup error: {exc}") from exc
    click.echo(json.dumps(result, indent=2))
    sys.exit(0 if result["ok"] else 1)


def _command_terms(message: str) -> str:
    """A validation message written for the API, naming this command's arguments."""
    message = message.replace("option.payload.uri", "SOURCE")
    message = message.replace("option.payload.host", "HOST")
    return re.sub(r"option\.payload\.(\w+)", r"--\1", message)


def _json_option(name: str, value: str | None) -> dict[str, Any]:
    """{name: the parsed JSON} of an option given, {} of one left out."""
    if not value:
        return {}
    try:
        parsed = json.loads(value)
    except ValueError as exc:
        raise click.BadParameter(f"--{name} must be a JSON object") from exc
    return {name: parsed}


def _thresholds_option(value: str | None) -> dict[str, Any]:
    return _json_option("thresholds", value)


@main.command("ping")
@click.argument("host")
@click.option("--count", type=int, default=100, show_default=True)
@click.option("--interval", type=float, default=0.1, show_default=True, help="seconds")
@click.option(
    "--timeout", type=float, default=1.0, show_default=True, help="seconds per reply"
)
@click.option("--thresholds", help="JSON, e.g. '{\"packet_loss_warning\": 0.05}'")
def ping_command(
    host: str, count: int, interval: float, timeout: float, thresholds: str | None
) -> None:
    """Ping HOST here and print the result JSON."""
    options = {"count": count, "interval": interval, "timeout": timeout}
    _measure_and_print("ping", host, {**options, **_thresholds_option(thresholds)})


def _stream_command(task_type: str) -> Any:
    @click.argument("source")
    @click.option("--duration", type=float, default=None, help="seconds of stream")
    @click.option("--transport", type=click.Choice(["tcp", "udp"]), default="tcp")
    @click.option("--thresholds", help="JSON object of threshold overrides")
    @click.option(
        "--expected", help='JSON profile, e.g. \'{"codec": "h264", "width": 1280}\''
    )
    def command(
        source: str,
        duration: float | None,
        transport: str,
        thresholds: str | None,
        expected: str | None,
    ) -> None:
        payload: dict[str, Any] = {
            "transport": transport,
            **_thresholds_option(thresholds),
        }
        if duration is not None:
            payload["duration"] = duration
        payload.update(_json_option("expected", expected))
        _measure_and_print(task_type, source, payload)

    return command


main.command("probe", help="Probe SOURCE (stream URI or file): picture and sound.")(
    _stream_command("probe")
)
main.command(
    "check", help="Check SOURCE (stream URI or file): transport and decoding."
)(_stream_command("check"))


@main.command("token")
@click.option(
    "--ttl",
    type=click.IntRange(min=1),
    default=None,
    help="seconds; default CAMTESTER_TOKEN_TTL_S",
)
def token_command(ttl: int | None) -> None:
    """Print a bearer token for the configured CAMTESTER_JWT_SECRET."""
    from camtester.api.auth import issue_token

    settings = get_settings()
    if not settings.jwt_secret:
        raise click.ClickException(
            "CAMTESTER_JWT_SECRET is not set (make run keeps its secret in "
            "var/jwt-secret: CAMTESTER_JWT_SECRET=$(cat var/jwt-secret))"
        )
    click.echo(issue_token(settings.jwt_secret, ttl or settings.token_ttl_s))


@main.command("zscore-calibrate")
@click.option("--lag", type=int, default=20, show_default=True)
@click.option("--threshold", type=float, default=10.0, show_default=True)
@click.option("--influence", type=float, default=0.5, show_default=True)
def zscore_command(lag: int, threshold: float, influence: float) -> None:
    """Read numbers (whitespace or comma separated) on stdin; show flagged points."""
    from camtester.probes.zscore import calibration_report, parse_series

    try:
        values = parse_series(sys.stdin.read())
        report = calibration_report(
            values, lag=lag, threshold=threshold, influence=influence
        )
    except InvalidInput as exc:
        raise click.UsageError(str(exc)) from exc
    click.echo(report)


@main.command("worker", context_settings={"ignore_unknown_options": True})
@click.option("--geo", required=True, help="region whose queues this worker serves")
@click.option("--types", default="ping,probe,check", show_default=True)
@click.option("--results/--no-results", default=True, help="also serve queue results")
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def worker_command(
    geo: str, types: str, results: bool, celery_args: tuple[str, ...]
) -> None:
    """Start a Celery worker on the queues <geo>.<type> (and results)."""
    from camtester.spec import validate_geo

    try:
        validate_geo(geo, "--geo")
    except CamtesterError as exc:
        raise click.BadParameter(str(exc)) from exc
    queues = [f"{geo}.{t.strip()}" for t in types.split(",") if t.strip()]
    if results:
        queues.append("results")
    argv = ["celery", "-A", "camtester", "worker", "-Q", ",".join(queues), *celery_args]
    _exec(argv)


@main.command("flower", context_settings={"ignore_unknown_options": True})
@click.argument("flower_args", nargs=-1, type=click.UNPROCESSED)
def flower_command(flower_args: tuple[str, ...]) -> None:
    """Start Flower on the default broker (pass e.g. --port=5555 --basic-auth=u:p)."""
    _exec(["celery", "-A", "camtester", "flower", *flower_args])


@main.command("api", context_settings={"ignore_unknown_options": True})
@click.option("--bind", default="127.0.0.1:8000", show_default=True)
@click.option("--workers", type=int, default=2, show_default=True)
@click.argument("gunicorn_args", nargs=-1, type=click.UNPROCESSED)
def api_command(bind: str, workers: int, gunicorn_args: tuple[str, ...]) -> None:
    """Serve the API with gunicorn (wsgi:app).

    Set PROMETHEUS_MULTIPROC_DIR to an empty directory when --workers > 1, so
    that /metrics adds up every worker process.
    """
    argv = [
        "gunicorn",
        "--bind",
        bind,
        "--workers",
        str(workers),
        "--logger-class",
        "camtester.logs.GunicornLogger",
        # Its default path is one per user, shared by every gunicorn there.
        "--no-control-socket",
        *gunicorn_args,
        "wsgi:app",
    ]
    _exec(argv)


def _exec(argv: list[str]) -> None:
    """Replace this process, so signals reach the service directly."""
    program = shutil.which(
        argv[0],
        path=os.pathsep.join(
            [str(Path(sys.executable).parent), os.environ.get("PATH", "")]
        ),
    )
    if program is None:
        raise click.ClickException(f"{argv[0]} is not installed")
    os.execv(program, [program, *argv[1:]])
