"""Which restreamer reads a camera: consistent hashing over a region's hosts.

A camera must always be read through the same restreamer, and adding or removing
a host should move only the cameras that hashed to it, so a plain modulo will not
do; uhashring's ring (160 points per host on an MD5 continuum) moves about 1/N.
The ring is keyed on the URI without its credentials, so a camera whose password
changes keeps its restreamer.

A restreamer reads the camera named by the path of `rtsp://<host>/<url-safe
base64 of the original URI>`. That path carries the camera's credentials;
`camtester.uris.mask_uri` decodes such paths and masks what they carry.
"""

from __future__ import annotations

import base64
import functools
import ipaddress
import re

from uhashring import HashRing

from camtester.errors import InvalidInput
from camtester.uris import mask_uri, strip_credentials

# A DNS name (RFC 1123 labels) or an IPv4 literal, optionally with :port.
_NAME = re.compile(
    r"^(?=.{1,253}$)(?!-)[a-z0-9-]{1,63}(?<!-)(\.(?!-)[a-z0-9-]{1,63}(?<!-))*$"
)
_NAME_PORT = re.compile(r"^(?P<name>[^:\[\]]+)(:(?P<port>[0-9]{1,5}))?$")
_V6_PORT = re.compile(r"^\[(?P<name>[0-9a-f:.]+)\](:(?P<port>[0-9]{1,5}))?$")

#: Hosts per ring kept built; a region's ring is rebuilt only when its hosts change.
RING_CACHE_SIZE = 64


def validate_restreamer_host(host: object) -> str:
    """`name`, `name:port`, `a.b.c.d:port` or `[v6]:port`, lower-cased; else 400."""
    if not isinstance(host, str):
        raise InvalidInput("host must be a host name or address, optionally with :port")
    text = host.strip().lower()
    match = _V6_PORT.match(text) or _NAME_PORT.match(text)
    if not match or not _valid_name(
        match.group("name"), bracketed=text.startswith("[")
    ):
        raise InvalidInput("host must be a host name or address, optionally with :port")

    port = match.group("port")
    if port is not None and not 1 <= int(port) <= 65535:
        raise InvalidInput("host port must be between 1 and 65535")
    return text


def _valid_name(name: str, *, bracketed: bool) -> bool:
    if bracketed:
        try:
            return ipaddress.ip_address(name).version == 6
        except ValueError:
            return False
    return bool(_NAME.match(name))


def ring_key(uri: str) -> str:
    """What the ring hashes: the URI without user and password."""
    try:
        bare, _, _ = strip_credentials(uri.strip())
    except ValueError as exc:
        # urlsplit refuses e.g. a port that is not a number.
        raise InvalidInput(f"uri cannot be parsed: {exc}") from exc
    return bare


@functools.lru_cache(maxsize=RING_CACHE_SIZE)
def _ring(hosts: tuple[str, ...]) -> HashRing:
    return HashRing(nodes=list(hosts))


def pick_host(hosts: list[str], uri: str) -> str | None:
    """The restreamer `uri` maps to, or None when there is none."""
    if not hosts:
        return None
    return str(_ring(tuple(sorted(hosts))).get_node(ring_key(uri)))


def restreamed_uri(host: str, uri: str) -> str:
    """`rtsp://<host>/<url-safe base64 of the original URI>`."""
    encoded = base64.urlsafe_b64encode(uri.encode()).decode("ascii")
    return f"rtsp://{host}/{encoded}"


def mask_restreamed(text: str) -> str:
    """`mask_uri`, which also shows a restreamed URI as the masked URI it carries.

    `rtsp://rs-1:8554/<base64 of rtsp://admin:secret@cam/live>` becomes
    `rtsp://rs-1:8554/[rtsp://***@cam/live]`: readable, and without the secret.
    """
    return mask_uri(text)
