"""Every tunable of camtester, read once from a `CAMTESTER_*` environment variable.

Each value has a default that works on one machine, except the JWT secret. Units are
in the names: `_S` seconds, `_BYTES` bytes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

PREFIX = "CAMTESTER_"


class SettingsError(ValueError):
    """An environment variable holds a value that cannot be parsed."""


def _raw(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(PREFIX + name)
    if value is None or value.strip() == "":
        return None
    return value.strip()


def _str(env: Mapping[str, str], name: str, default: str) -> str:
    value = _raw(env, name)
    return default if value is None else value


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    value = _raw(env, name)
    if value is None:
        return default
    try:
        return float(value)
    except ValueError as exc:
        raise SettingsError(f"{PREFIX}{name} must be a number, not {value!r}") from exc


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    value = _raw(env, name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError as exc:
        raise SettingsError(
            f"{PREFIX}{name} must be an integer, not {value!r}"
        ) from exc


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    value = _raw(env, name)
    if value is None:
        return default
    lowered = value.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{PREFIX}{name} must be true or false, not {value!r}")


def _mapping(env: Mapping[str, str], name: str) -> dict[str, str]:
    """Parse `region=url,region=url` into a dict."""
    value = _raw(env, name)
    if value is None:
        return {}
    result: dict[str, str] = {}
    for item in value.split(","):
        key, sep, url = item.strip().partition("=")
        if not sep or not key or not url:
            raise SettingsError(f"{PREFIX}{name} must be region=url,...; bad {item!r}")
        result[key.strip()] = url.strip()
    return result


def _json_object(env: Mapping[str, str], name: str) -> dict[str, Any]:
    value = _raw(env, name)
    if value is None:
        return {}
    try:
        parsed = json.loads(value)
    except ValueError as exc:
        raise SettingsError(f"{PREFIX}{name} must be a JSON object") from exc
    if not isinstance(parsed, dict):
        raise SettingsError(f"{PREFIX}{name} must be a JSON object")
    return parsed


@dataclass(frozen=True)
class Settings:
    """The configuration of one camtester process (API, worker or CLI)."""

    #: Redis URL of the task store (tasks, results, deviations, restreamers).
    redis_url: str = "redis://127.0.0.1:6379/0"
    #: Treat `redis_url` as a Redis Cluster entry point.
    redis_cluster: bool = False
    #: Default Celery broker for every region.
    broker_url: str = "redis://127.0.0.1:6379/1"
    #: Region -> broker URL, for regions that have a broker of their own.
    broker_urls: dict[str, str] = field(default_factory=dict)
    #: HS256 secret for bearer tokens; empty means every request is refused.
    jwt_secret: str = ""
    #: Lifetime of a token printed by `camtester token`, seconds.
    token_ttl_s: int = 86400
    #: How long tasks, results, snapshots and deviations are kept, seconds.
    result_ttl_s: int = 86400
    #: Stream sample length when a payload names none, seconds.
    sample_duration_s: float = 10.0
    #: Longest sample a payload may ask for, seconds.
    max_sample_duration_s: float = 300.0
    #: How long ffmpeg may wait for a camera to connect or send, seconds.
    connect_timeout_s: float = 5.0
    ffmpeg_path: str = "ffmpeg"
    ffprobe_path: str = "ffprobe"
    #: Stream URI schemes a task may name.
    allowed_schemes: tuple[str, ...] = (
        "rtsp",
        "rtsps",
        "rtmp",
        "http",
        "https",
        "srt",
        "udp",
    )
    #: Overrides of the default deviation thresholds (JSON object).
    thresholds: dict[str, Any] = field(default_factory=dict)
    #: Most tasks one `POST /tasks-batch` may carry.
    max_batch_tasks: int = 10000
    #: Largest request body the API reads, bytes.
    max_body_bytes: int = 16 * 1024 * 1024
    #: Default Celery worker concurrency (pool slots).
    worker_concurrency: int = 0
    #: Seconds before the broker hands an unacknowledged message to another
    #: worker; 0: twice the longest a task may run (`store.claims`).
    visibility_timeout_s: int = 0
    #: `text` or `json` (one JSON object per line).
    log_format: str = "text"
    log_level: str = "INFO"
    #: Port on which a worker serves its Prometheus figures; 0 disables it.
    worker_metrics_port: int = 0
    #: Address a worker's Prometheus figures are served on (0.0.0.0 in a container).
    worker_metrics_address: str = "127.0.0.1"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Build the settings from `env` (default: the process environment)."""
        env = os.environ if env is None else env
        defaults = cls()
        schemes = _raw(env, "ALLOWED_SCHEMES")
        return cls(
            redis_url=_str(env, "REDIS_URL", defaults.redis_url),
            redis_cluster=_bool(env, "REDIS_CLUSTER", defaults.redis_cluster),
            broker_url=_str(env, "BROKER_URL", defaults.broker_url),
            broker_urls=_mapping(env, "BROKER_URLS"),
            jwt_secret=_str(env, "JWT_SECRET", ""),
            token_ttl_s=_int(env, "TOKEN_TTL_S", defaults.token_ttl_s),
            result_ttl_s=_int(env, "RESULT_TTL_S", defaults.result_ttl_s),
            sample_duration_s=_float(
                env, "SAMPLE_DURATION_S", defaults.sample_duration_s
            ),
            max_sample_duration_s=_float(
                env, "MAX_SAMPLE_DURATION_S", defaults.max_sample_duration_s
            ),
            connect_timeout_s=_float(
                env, "CONNECT_TIMEOUT_S", defaults.connect_timeout_s
            ),
            ffmpeg_path=_str(env, "FFMPEG", defaults.ffmpeg_path),
            ffprobe_path=_str(env, "FFPROBE", defaults.ffprobe_path),
            allowed_schemes=(
                tuple(s.strip().lower() for s in schemes.split(",") if s.strip())
                if schemes
                else defaults.allowed_schemes
            ),
            thresholds=_json_object(env, "THRESHOLDS"),
            max_batch_tasks=_int(env, "MAX_BATCH_TASKS", defaults.max_batch_tasks),
            max_body_bytes=_int(env, "MAX_BODY_BYTES", defaults.max_body_bytes),
            worker_concurrency=_int(
                env, "WORKER_CONCURRENCY", defaults.worker_concurrency
            ),
            visibility_timeout_s=_int(
                env, "VISIBILITY_TIMEOUT_S", defaults.visibility_timeout_s
            ),
            log_format=_str(env, "LOG_FORMAT", defaults.log_format).lower(),
            log_level=_str(env, "LOG_LEVEL", defaults.log_level).upper(),
            worker_metrics_port=_int(
                env, "WORKER_METRICS_PORT", defaults.worker_metrics_port
            ),
            worker_metrics_address=_str(
                env, "WORKER_METRICS_ADDRESS", defaults.worker_metrics_address
            ),
        )

    def broker_for(self, geo_location: str) -> str:
        """The broker URL that carries the tasks of `geo_location`."""
        return self.broker_urls.get(geo_location, self.broker_url)


_current: Settings | None = None


def get_settings() -> Settings:
    """The process-wide settings, read from the environment on first use."""
    global _current
    if _current is None:
        _current = Settings.from_env()
    return _current


def reset_settings(settings: Settings | None = None) -> None:
    """Replace (or forget) the process-wide settings; for tests and the CLI."""
    global _current
    _current = settings
