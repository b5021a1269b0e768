"""The one exception tree of camtester.

CamtesterError
├── MeasurementError           the camera could not be measured: ok false
│   ├── TargetUnresolvable     unresolvable
│   ├── TargetRefused          refused
│   ├── TargetTimeout          timeout
│   ├── TargetUnauthorized     unauthorized
│   ├── TargetNotFound         not_found
│   ├── TargetUnsupported      unsupported
│   └── MeasurementInternal    internal
│       └── WorkerCannotMeasure    internal: the worker, not the camera
├── SetupError                 this worker cannot measure at all
├── InvalidInput               a client sent something out of contract (400)
│   └── TooLarge               a body or batch over its limit (413)
├── NotFound                   an unknown or expired task or record (404)
├── Unauthorized               no, bad or expired token (401)
└── ServiceUnavailable         the store or the broker does not answer (503)
    ├── StoreUnavailable
    └── BrokerUnavailable
"""

from __future__ import annotations


class CamtesterError(Exception):
    """Base of every error camtester raises on purpose."""


class MeasurementError(CamtesterError):
    """A measurement could not be made; the result is `ok: false` with `code`."""

    code = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class TargetUnresolvable(MeasurementError):
    """The host name of the target does not resolve."""

    code = "unresolvable"


class TargetRefused(MeasurementError):
    """The target refused the connection."""

    code = "refused"


class TargetTimeout(MeasurementError):
    """The target did not answer, or stopped answering, within the timeout."""

    code = "timeout"


class TargetUnauthorized(MeasurementError):
    """The target asked for credentials that were missing or wrong."""

    code = "unauthorized"


class TargetNotFound(MeasurementError):
    """The target answered that the stream path does not exist."""

    code = "not_found"


class TargetUnsupported(MeasurementError):
    """The target speaks a protocol or format camtester cannot read."""

    code = "unsupported"


class MeasurementInternal(MeasurementError):
    """The measurement failed for a reason that matches no other code."""

    code = "internal"


class WorkerCannotMeasure(MeasurementInternal):
    """The worker is set up so that it cannot measure; no camera is to blame."""


class SetupError(CamtesterError):
    """The worker itself is misconfigured, e.g. ICMP not permitted or a bad ffmpeg."""


class InvalidInput(CamtesterError):
    """A client request breaks the contract; the message names the field."""

    status = 400


class TooLarge(InvalidInput):
    """A request body or a batch is over its configured limit."""

    status = 413


class NotFound(CamtesterError):
    """The task, record or host asked for does not exist or has expired."""


class Unauthorized(CamtesterError):
    """The request carries no valid bearer token."""


class ServiceUnavailable(CamtesterError):
    """A backing service does not answer; `service` names it."""

    service = "service"


class StoreUnavailable(ServiceUnavailable):
    """The Redis task store does not answer."""

    service = "store"


class BrokerUnavailable(ServiceUnavailable):
    """The Celery broker does not answer."""

    service = "broker"
