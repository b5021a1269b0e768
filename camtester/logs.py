"""Logging set-up: the task id and type on every line about a task, no credentials.

Code anywhere logs through `logging.getLogger(__name__)`; while a task runs,
`task_context` puts its id and type into a context variable that the filter below
copies onto each record, so that probes need not know which task they serve.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys
from collections.abc import Iterator

from camtester.uris import mask_uri

_task: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar(
    "camtester_task", default=None
)

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(task_tag)s] %(message)s"


@contextlib.contextmanager
def task_context(task_id: str, task_type: str) -> Iterator[None]:
    """Stamp `task_id` and `task_type` on every log record made inside the block."""
    token = _task.set((task_id, task_type))
    try:
        yield
    finally:
        _task.reset(token)


def current_task() -> tuple[str, str] | None:
    """The (task id, task type) of the task running in this context, if any."""
    return _task.get()


class TaskContextFilter(logging.Filter):
    """Adds `task_id`, `task_type` and `task_tag`, and masks URI credentials."""

    def filter(self, record: logging.LogRecord) -> bool:
        task = _task.get()
        record.task_id, record.task_type = task if task else ("-", "-")
        record.task_tag = f"{record.task_type} {record.task_id}" if task else "-"

        # Mask after formatting the arguments: a URI may arrive as a %s argument.
        message = record.getMessage()
        masked = mask_uri(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname,
            "logger": record.name,
            "task_id": getattr(record, "task_id", "-"),
            "task_type": getattr(record, "task_type", "-"),
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = mask_uri(self.formatException(record.exc_info))
        return json.dumps(entry)


def make_handler(log_format: str) -> logging.Handler:
    """A stderr handler in `text` or `json` format, with the task filter attached."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    handler.addFilter(TaskContextFilter())
    return handler


def configure_logging(log_format: str = "text", level: str = "INFO") -> None:
    """Route the root logger through one camtester handler."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(make_handler(log_format))
    root.setLevel(level)
