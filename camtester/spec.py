"""Validation of tasks as clients send them, into one normalised form.

A normalised measurement is `{"type", "target", "options"}`; a task adds
`geo_location` and, for a complex task, `subtasks` (a list of measurements).
Every error is an `InvalidInput` whose message names the field at fault.
"""

from __future__ import annotations

import ipaddress
import math
import re
from typing import Any

from camtester.analysis.thresholds import merge_thresholds
from camtester.errors import InvalidInput
from camtester.settings import Settings
from camtester.uris import mask_uri, validate_stream_uri

MEASUREMENT_TYPES = ("ping", "probe", "check")
TASK_TYPES = (*MEASUREMENT_TYPES, "complex")
TRANSPORTS = ("tcp", "udp")

# A region becomes the first part of a queue name, so it stays a plain word.
_GEO = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
# RFC 1123 host names: labels of letters, digits and inner hyphens.
_HOST_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")

PING_LIMITS = {"count": (1, 10000), "interval": (0.001, 60.0), "timeout": (0.01, 60.0)}
PING_DEFAULTS = {"count": 100, "interval": 0.1, "timeout": 1.0}
PROFILE_FIELDS = {"codec": str, "width": int, "height": int, "fps": float}


def validate_task(raw: Any, settings: Settings, field: str = "task") -> dict[str, Any]:
    """Check one task as a client sent it and return its normalised form."""
    if not isinstance(raw, dict):
        raise InvalidInput(f"{field} must be a JSON object")

    task_type = raw.get("type")
    if task_type not in TASK_TYPES:
        allowed = ", ".join(TASK_TYPES)
        raise InvalidInput(f"{field}.type must be one of {allowed}; got {task_type!r}")

    geo = validate_geo(raw.get("geo_location"), f"{field}.geo_location")

    if task_type == "complex":
        subtasks = _validate_subtasks(raw.get("payloads"), settings, field)
        return {"type": "complex", "geo_location": geo, "subtasks": subtasks}

    measurement = validate_measurement(task_type, raw.get("payload"), settings, field)
    return {**measurement, "geo_location": geo}


def validate_geo(geo: Any, field: str) -> str:
    """A region name: it becomes the first part of queue names."""
    if geo is None:
        raise InvalidInput(f"{field} is required")
    if not isinstance(geo, str) or not _GEO.match(geo):
        raise InvalidInput(
            f"{field} must be a region name: lower-case letters, digits, '-' or '_'"
        )
    return geo


def _validate_subtasks(
    raw: Any, settings: Settings, field: str
) -> list[dict[str, Any]]:
    if not isinstance(raw, list) or not raw:
        raise InvalidInput(f"{field}.payloads must be a non-empty list of subtasks")

    subtasks = []
    for index, item in enumerate(raw):
        where = f"{field}.payloads[{index}]"
        if not isinstance(item, dict):
            raise InvalidInput(f"{where} must be an object with type and payload")
        sub_type = item.get("type")
        if sub_type == "complex":
            raise InvalidInput(f"{where}.type must not be complex: no nesting")
        if sub_type not in MEASUREMENT_TYPES:
            allowed = ", ".join(MEASUREMENT_TYPES)
            raise InvalidInput(f"{where}.type must be one of {allowed}")
        subtasks.append(
            validate_measurement(sub_type, item.get("payload"), settings, where)
        )
    return subtasks


def validate_measurement(
    task_type: str, payload: Any, settings: Settings, field: str
) -> dict[str, Any]:
    """Normalise the payload of one ping, probe or check."""
    target_key = "host" if task_type == "ping" else "uri"
    if isinstance(payload, str):
        payload = {target_key: payload}
    if not isinstance(payload, dict) or not payload:
        raise InvalidInput(f"{field}.payload must be a {target_key} or an object")

    target = payload.get(target_key)
    if not isinstance(target, str) or not target.strip():
        raise InvalidInput(f"{field}.payload.{target_key} is required")
    unknown = set(payload) - _allowed_keys(task_type)
    if unknown:
        raise InvalidInput(f"{field}.payload.{min(unknown)} is not an option")

    where = f"{field}.payload"
    if task_type == "ping":
        target = validate_host(target, f"{where}.host")
        options = _ping_options(payload, where)
        _limit_ping_time(options, settings, where)
    else:
        target = validate_stream_uri(target, settings.allowed_schemes, f"{where}.uri")
        options = _stream_options(payload, settings, where)
    return {"type": task_type, "target": target, "options": options}


def _allowed_keys(task_type: str) -> set[str]:
    if task_type == "ping":
        return {"host", "count", "interval", "timeout", "thresholds"}
    stream = {"uri", "duration", "transport", "thresholds"}
    # Only a probe decodes enough to compare the stream with a profile.
    return stream | {"expected"} if task_type == "probe" else stream


def validate_host(host: str, field: str) -> str:
    """A host name or an IP address literal, nothing else."""
    host = host.strip()
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass

    name = host.removesuffix(".")
    labels = name.split(".")
    if len(name) > 253 or not all(_HOST_LABEL.match(label) for label in labels):
        raise InvalidInput(f"{field} must be a host name or an IP address")
    # "127.1" or "2130706433" are no names: the resolver would read them as
    # shorthand addresses (inet_aton), which ip_address above refused.
    if labels[-1].isdigit():
        raise InvalidInput(f"{field} must be a host name or an IP address")
    return host


def _number(value: Any, field: str, low: float, high: float) -> float:
    """A finite number within [low, high]; booleans are not numbers here."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInput(f"{field} must be a number")
    if not math.isfinite(value) or not low <= value <= high:
        raise InvalidInput(f"{field} must be between {low:g} and {high:g}")
    return float(value)


def _ping_options(payload: dict[str, Any], where: str) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for name, default in PING_DEFAULTS.items():
        low, high = PING_LIMITS[name]
        value = payload.get(name, default)
        options[name] = _number(value, f"{where}.{name}", low, high)
    if options["count"] != int(options["count"]):
        raise InvalidInput(f"{where}.count must be a whole number")
    options["count"] = int(options["count"])
    options["thresholds"] = _thresholds(payload, where)
    return options


def _limit_ping_time(options: dict[str, Any], settings: Settings, where: str) -> None:
    """A ping may take no longer than the longest sample.

    NOTE: the broker's visibility timeout and the tasks' time limits are made
    from the longest sample; a longer ping would be delivered twice or killed.
    """
    longest = (options["count"] - 1) * options["interval"] + options["timeout"]
    if longest > settings.max_sample_duration_s:
        raise InvalidInput(
            f"{where}: (count - 1) * interval + timeout is {longest:g} s; "
            f"a ping may take at most {settings.max_sample_duration_s:g} s"
        )


def _stream_options(
    payload: dict[str, Any], settings: Settings, where: str
) -> dict[str, Any]:
    duration = payload.get("duration", settings.sample_duration_s)
    transport = payload.get("transport", "tcp")
    if transport not in TRANSPORTS:
        raise InvalidInput(f"{where}.transport must be tcp or udp")

    options: dict[str, Any] = {
        "duration": _number(
            duration, f"{where}.duration", 1.0, settings.max_sample_duration_s
        ),
        "transport": transport,
        "thresholds": _thresholds(payload, where),
    }
    if "expected" in payload:
        options["expected"] = _expected_profile(payload["expected"], where)
    return options


def _thresholds(payload: dict[str, Any], where: str) -> dict[str, float]:
    raw = payload.get("thresholds")
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InvalidInput(f"{where}.thresholds must be an object")
    try:
        merge_thresholds(raw)
    except InvalidInput as exc:
        raise InvalidInput(f"{where}.{exc.args[0]}") from exc
    return dict(raw)


def _expected_profile(raw: Any, where: str) -> dict[str, Any]:
    if not isinstance(raw, dict) or not raw:
        raise InvalidInput(
            f"{where}.expected must be an object of codec/width/height/fps"
        )

    profile: dict[str, Any] = {}
    for name, value in raw.items():
        kind = PROFILE_FIELDS.get(name)
        if kind is None:
            raise InvalidInput(f"{where}.expected.{name} is not a profile field")
        if kind is str:
            if not isinstance(value, str) or not value:
                raise InvalidInput(f"{where}.expected.{name} must be a string")
            profile[name] = value.lower()
        else:
            profile[name] = _number(value, f"{where}.expected.{name}", 1, 100000)
    return profile


def public_measurement(measurement: dict[str, Any]) -> dict[str, Any]:
    """The measurement as it may be shown: target with credentials masked."""
    target_key = "host" if measurement["type"] == "ping" else "uri"
    options = {k: v for k, v in measurement["options"].items() if v != {}}
    return {
        "type": measurement["type"],
        "payload": {target_key: mask_uri(measurement["target"]), **options},
    }
