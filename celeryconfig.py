"""Celery's own settings for camtester; camtester's settings come from CAMTESTER_*."""

import kombu.transport.redis

from camtester.settings import get_settings
from camtester.store.claims import (
    hard_time_limit_s,
    soft_time_limit_s,
    visibility_timeout_s,
)

_settings = get_settings()

broker_url = _settings.broker_url
broker_connection_retry_on_startup = True

# Results go to camtester's own store through the aggregation task, so Celery
# keeps none of its own.
task_ignore_result = True
result_backend = None

task_serializer = "json"
accept_content = ["json"]
timezone = "UTC"

# Nothing lost: a message is acknowledged only after its task ran, and a task
# whose pool process died (SIGKILL, the OOM killer) is handed back at once
# instead of acknowledged. The run claims and the delivery count in
# camtester.store.claims keep a redelivered task from running twice or forever.
task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 1

# CAMTESTER_WORKER_CONCURRENCY sets the pool slots of workers started without -c;
# 0 leaves Celery's own default (one slot per core).
if _settings.worker_concurrency > 0:
    worker_concurrency = _settings.worker_concurrency

# Time limits (prefork pool; the threads pool cannot enforce them, and there
# ffmpeg's own wall timeouts bound a task). At the soft limit the task stops its
# ffmpeg and stores a timeout; at the hard limit the pool process is killed and
# the kernel kills its ffmpeg (PR_SET_PDEATHSIG).
task_soft_time_limit = soft_time_limit_s(_settings)
task_time_limit = hard_time_limit_s(_settings)


_visibility_s = visibility_timeout_s(_settings)
broker_transport_options = {
    "visibility_timeout": _visibility_s,
    # Look for messages of dead workers every few seconds, not every 100 s
    # (kombu's default: a sweep every 10 s, scanning on every 10th).
    "unacked_restore_interval": max(1, min(10, _visibility_s // 4)),
    "unacked_restore_throttle": 1,
}

# NOTE: when the broker goes away, Celery 5.7 drops the broken connection's
# transport and then closes its channel; closing a kombu Redis channel that holds
# unacknowledged messages tries to restore them, which then fails with an
# AttributeError that Celery does not expect, and the worker exits
# ("Unrecoverable error"). A restore needs the broker, so it cannot work at that
# moment anyway; without it, the messages stay in the broker's unacked set and
# come back after the visibility timeout, as those of a killed worker do.
kombu.transport.redis.QoS.restore_at_shutdown = False

# A measurement running when the broker connection drops goes on: its result is
# handed on once the broker is back, and if its message comes again after the
# visibility timeout, the stored result or the live claim drops that delivery.
worker_cancel_long_running_tasks_on_connection_loss = False

task_routes = {"camtester.aggregate": {"queue": "results"}}
task_default_queue = "results"

# Flower shows tasks from the workers' events. Messages the API publishes in
# batches write no task-sent event (it would double the broker writes), so Flower
# lists a task from the moment a worker receives it.
worker_send_task_events = True
task_send_sent_event = True
