"""Celery's own settings for camtester; camtester's settings come from CAMTESTER_*."""

from camtester.settings import get_settings

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
# whose worker process died is handed back instead of acknowledged.
task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 1

# NOTE: the Redis transport hands an unacknowledged message to another worker once
# the visibility timeout passes. It must outlast the longest task the API allows,
# or a slow probe runs twice at once.
longest_task_s = _settings.max_sample_duration_s + 4 * _settings.connect_timeout_s + 60
broker_transport_options = {"visibility_timeout": int(2 * longest_task_s)}

task_routes = {"camtester.aggregate": {"queue": "results"}}
task_default_queue = "results"

# Flower shows tasks from these events.
worker_send_task_events = True
task_send_sent_event = True
