"""Which restreamer reads a camera: consistent hashing over a region's hosts.

A camera must always be read through the same restreamer, and adding or removing
a host should move only the cameras that hashed to it, so a plain modulo will not
do; uhashring's ring (ketama-style, many points per host) moves about 1/N.
"""

from __future__ import annotations

import base64
import re

from uhashring import HashRing

from camtester.errors import InvalidInput
from camtester.uris import strip_credentials

# host or host:port, as a restreamer is registered.
_HOST = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?(:[0-9]{1,5})?$")


def validate_restreamer_host(host: object) -> str:
    """A host name or address with an optional port; anything else is a 400."""
    if not isinstance(host, str) or not _HOST.match(host.strip()):
        raise InvalidInput("host must be a host name or address, optionally with :port")
    return host.strip().lower()


def pick_host(hosts: list[str], uri: str) -> str | None:
    """The restreamer `uri` maps to, or None when there is none."""
    if not hosts:
        return None
    ring = HashRing(nodes=sorted(hosts))
    bare, _, _ = strip_credentials(uri)
    return str(ring.get_node(bare))


def restreamed_uri(host: str, uri: str) -> str:
    """`rtsp://<host>/<url-safe base64 of the original URI>`."""
    encoded = base64.urlsafe_b64encode(uri.encode()).decode("ascii")
    return f"rtsp://{host}/{encoded}"
