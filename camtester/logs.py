"""Logging set-up: the task id and type on every line about a task, no credentials.

Code anywhere logs through `logging.getLogger(__name__)`; while a task runs,
`task_context` puts its id and type into a context variable that the filter below
copies onto each record, so that probes need not know which task they serve.
Celery's own lines about a task ("received", "succeeded", "retry") carry the
Celery id; the filter finds the camtester task behind it from the task's
arguments, which every camtester task starts with the camtester task id.
"""

from __future__ import annotations

import ast
import contextlib
import contextvars
import json
import logging
import re
import sys
import threading
from collections.abc import Iterator, Mapping
from typing import Any

from gunicorn.glogging import Logger as _GunicornBaseLogger

from camtester.uris import MASK, mask_uri

_task: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar(
    "camtester_task", default=None
)
_celery_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "camtester_celery_id", default=None
)

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(task_tag)s] %(message)s"

# A URI inside a query string arrives percent-encoded ("rtsp%3A%2F%2Fuser%3Apw%40
# cam"), e.g. in an access log line of /restreamers/lookup?uri=...; its userinfo
# runs from the encoded "//" to the last encoded "@" before the next "/" or "&".
_ENCODED_USERINFO = re.compile(
    r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*%3A%2F%2F)(?:(?!%2F)[^&\s#/])*%40",
    re.IGNORECASE,
)

#: Celery ids whose camtester task is known, kept for the lines that name only
#: the Celery id (a retry, a failure); oldest dropped first.
_KNOWN_CELERY_IDS = 10000
_identities: dict[str, tuple[str, str]] = {}
_identities_lock = threading.Lock()


def mask(text: str) -> str:
    """`text` with the userinfo of every URI masked, plain or percent-encoded."""
    text = mask_uri(text)
    return _ENCODED_USERINFO.sub(lambda m: f"{m.group('scheme')}{MASK}%40", text)


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


_entered = threading.local()


def enter_celery_task(celery_id: str, identity: tuple[str, str] | None) -> None:
    """Stamp a Celery task's lines from its start to `leave_celery_task`.

    For Celery's signals, which open and close a task in two separate calls on
    the thread that runs it; `task_context` serves code that has a block.
    """
    stack = getattr(_entered, "stack", None)
    if stack is None:
        stack = _entered.stack = []
    if identity is not None:
        remember_celery_id(celery_id, identity)
    tokens = (_celery_id.set(celery_id), _task.set(identity or _task.get()))
    stack.append(tokens)


def leave_celery_task() -> None:
    """Undo the latest `enter_celery_task` of this thread."""
    stack = getattr(_entered, "stack", None)
    if not stack:
        return
    celery_token, task_token = stack.pop()
    _task.reset(task_token)
    _celery_id.reset(celery_token)


def remember_celery_id(celery_id: str, identity: tuple[str, str]) -> None:
    """Note which camtester task a Celery id belongs to."""
    with _identities_lock:
        _identities[celery_id] = identity
        while len(_identities) > _KNOWN_CELERY_IDS:
            del _identities[next(iter(_identities))]


def identity_from_args(task_name: str, args: Any) -> tuple[str, str] | None:
    """(task id, task type) of a camtester Celery task, from its arguments.

    The measurement tasks take (task id, index, measurement) and are named
    `camtester.<type>`; the aggregation takes (envelope, task id, index, task)
    when it runs and shows (task id, index, task type, region) as its argsrepr.
    """
    if not task_name.startswith("camtester.") or not isinstance(args, tuple | list):
        return None
    kind = task_name.removeprefix("camtester.")
    if kind != "aggregate":
        if args and isinstance(args[0], str):
            return args[0], kind
        return None

    if len(args) >= 4 and isinstance(args[3], Mapping):
        return str(args[1]), str(args[3].get("type", "-"))
    if len(args) >= 3 and isinstance(args[0], str) and isinstance(args[2], str):
        return args[0], args[2]
    return None


def _identity_of_celery_record(data: Mapping[str, Any]) -> tuple[str, str] | None:
    """The camtester task behind one of Celery's own task log lines."""
    celery_id = str(data.get("id") or "")
    with _identities_lock:
        known = _identities.get(celery_id)
    if known is not None:
        return known

    # The argsrepr camtester publishes is a Python literal: a tuple of
    # strings, numbers and dicts of them.
    try:
        args = ast.literal_eval(str(data.get("args") or ""))
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None
    identity = identity_from_args(str(data.get("name") or ""), args)
    if identity is not None and celery_id:
        remember_celery_id(celery_id, identity)
    return identity


def _celery_data(record: logging.LogRecord) -> Mapping[str, Any] | None:
    # Celery passes a task line's context both as the format mapping and as
    # `extra={"data": ...}`; either holds the Celery id and the task name.
    for candidate in (getattr(record, "data", None), record.args):
        if isinstance(candidate, Mapping) and "id" in candidate and "name" in candidate:
            return candidate
    return None


_PLAIN = logging.Formatter()


class TaskContextFilter(logging.Filter):
    """Adds `task_id`, `task_type`, `celery_id` and `task_tag`; masks credentials."""

    def filter(self, record: logging.LogRecord) -> bool:
        task = _task.get()
        celery_id = _celery_id.get()
        data = _celery_data(record)
        if data is not None:
            celery_id = str(data["id"])
            task = _identity_of_celery_record(data) or task

        task_id, task_type = task if task else ("-", "-")
        record.task_id = task_id
        record.task_type = task_type
        record.celery_id = celery_id or "-"
        record.task_tag = f"{task_type} {task_id}" if task else "-"

        # Mask after formatting the arguments: a URI may arrive as a %s argument.
        message = record.getMessage()
        masked = mask(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:
            # Formatters reuse exc_text: a traceback quoting a URI is masked too.
            record.exc_text = mask(_PLAIN.formatException(record.exc_info))
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname,
            "logger": record.name,
            "process": record.process,
            "task_id": getattr(record, "task_id", "-"),
            "task_type": getattr(record, "task_type", "-"),
            "celery_id": getattr(record, "celery_id", "-"),
            "message": mask(record.getMessage()),
        }
        if record.exc_info:
            text = record.exc_text or self.formatException(record.exc_info)
            entry["exception"] = mask(text)
        if record.stack_info:
            entry["stack"] = mask(self.formatStack(record.stack_info))
        return json.dumps(entry, default=str)


def make_formatter(log_format: str) -> logging.Formatter:
    """The formatter of `text` or `json` lines."""
    if log_format == "json":
        return JsonFormatter()
    return logging.Formatter(TEXT_FORMAT)


def make_handler(log_format: str) -> logging.Handler:
    """A stderr handler in `text` or `json` format, with the task filter attached."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(make_formatter(log_format))
    handler.addFilter(TaskContextFilter())
    return handler


def configure_logging(log_format: str = "text", level: str = "INFO") -> None:
    """Route the root logger through one camtester handler."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(make_handler(log_format))
    root.setLevel(level)

    # The pool's debug line repeats every raw task message, the real arguments
    # with a camera's credentials among them, before any task is running.
    logging.getLogger("celery.pool").setLevel(
        max(logging.INFO, logging.getLogger().getEffectiveLevel())
    )

    # Python warnings would otherwise go to stderr as bare text, breaking the
    # one-object-per-line promise of the JSON format.
    logging.captureWarnings(True)


class GunicornLogger(_GunicornBaseLogger):
    """gunicorn's error and access lines in camtester's format (`--logger-class`)."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        from camtester.settings import get_settings

        formatter = make_formatter(get_settings().log_format)
        for log in (self.error_log, self.access_log):
            for handler in log.handlers:
                handler.setFormatter(formatter)
                if not any(isinstance(f, TaskContextFilter) for f in handler.filters):
                    handler.addFilter(TaskContextFilter())
