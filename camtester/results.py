"""Result documents as DESIGN.md fixes them: ok, time, payload, error, deviations."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from camtester.errors import MeasurementError


def utc_now_iso() -> str:
    """The current time as ISO-8601 UTC with millisecond precision."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def success(
    payload: dict[str, Any], deviations: list[dict[str, Any]]
) -> dict[str, Any]:
    """A measurement that was made; a broken camera still lands here."""
    return {
        "ok": True,
        "time": utc_now_iso(),
        "payload": payload,
        "error": None,
        "deviations": deviations,
    }


def failure(
    error: MeasurementError,
    deviations: list[dict[str, Any]],
    payload: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A measurement that could not be made, with its stable error code."""
    return {
        "ok": False,
        "time": utc_now_iso(),
        "payload": payload,
        "error": {"code": error.code, "message": error.message},
        "deviations": deviations,
    }


def worst_severity(results: list[dict[str, Any]]) -> str:
    """`ok`, `warning` or `critical`: the worst among the results' deviations.

    A result that could not be made counts as critical whatever it carries.
    """
    verdict = "ok"
    for result in results:
        if not result.get("ok"):
            return "critical"
        for deviation in result.get("deviations") or []:
            if deviation.get("severity") == "critical":
                return "critical"
            verdict = "warning"
    return verdict
