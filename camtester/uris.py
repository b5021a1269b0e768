"""Stream URIs: the schemes a task may name, and credentials kept out of sight."""

from __future__ import annotations

import base64
import binascii
import re
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from camtester.errors import InvalidInput

MASK = "***"

#: Schemes a camera or a restreamer speaks. A deployment may allow fewer
#: (`CAMTESTER_ALLOWED_SCHEMES`), never others: ffmpeg would read `file:`,
#: `concat:`, `subfile:`, `pipe:` or `data:` from the worker itself.
STREAM_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "srt", "udp")

#: Longest stream URI a task may carry.
MAX_URI_CHARS = 2048

# A credential in a URI is whatever sits between "//" and the last "@" before the
# path. Matching it with a pattern, not urlsplit, also masks URIs that urlsplit
# rejects, such as a password holding an unencoded "@" or "/".
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/?#]*@)")


# A restreamer reads `rtsp://<host>/<url-safe base64 of the camera's URI>`: the
# camera's credentials ride in that path, where _USERINFO cannot see them, so a
# path that decodes to a URI is shown decoded, and masked.
_RESTREAMED = re.compile(
    r"(?P<prefix>rtsps?://[^/\s\"'<>]+/)(?P<token>[A-Za-z0-9_-]{8,}={0,2})"
)


def mask_uri(text: str) -> str:
    """Replace the user and password of every URI in `text` with `***`."""
    return _mask_userinfo(_RESTREAMED.sub(_unwrap_restreamed, text))


def _mask_userinfo(text: str) -> str:
    return _USERINFO.sub(lambda m: f"{m.group('scheme')}{MASK}@", text)


def _unwrap_restreamed(match: re.Match[str]) -> str:
    token = match.group("token")
    try:
        decoded = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return match.group(0)
    if "://" not in decoded:
        return match.group(0)
    return f"{match.group('prefix')}[{_mask_userinfo(decoded)}]"


def scheme_of(uri: str) -> str:
    """The lower-cased scheme of `uri`, or "" when it has none."""
    match = re.match(r"([A-Za-z][A-Za-z0-9+.-]*):", uri)
    return match.group(1).lower() if match else ""


def validate_stream_uri(uri: str, allowed_schemes: tuple[str, ...], field: str) -> str:
    """Return `uri` stripped if it is a stream URI camtester may read, else 400."""
    uri = uri.strip()
    if not uri:
        raise InvalidInput(f"{field} must be a non-empty stream URI")
    if len(uri) > MAX_URI_CHARS:
        raise InvalidInput(f"{field} is longer than {MAX_URI_CHARS} characters")
    if any(ord(ch) < 32 or ord(ch) == 127 or ch.isspace() for ch in uri):
        raise InvalidInput(f"{field} must not contain spaces or control characters")

    scheme = scheme_of(uri)
    allowed = [s for s in allowed_schemes if s in STREAM_SCHEMES]
    if scheme not in allowed:
        raise InvalidInput(
            f"{field} has scheme {scheme or 'none'!r}; "
            f"allowed schemes: {', '.join(allowed)}"
        )

    try:
        parts = urlsplit(with_encoded_credentials(uri))
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError as exc:
        raise InvalidInput(f"{field} is not a valid URI: {exc}") from exc
    if not parts.hostname:
        raise InvalidInput(f"{field} must name a host")
    return uri


def with_encoded_credentials(uri: str) -> str:
    """Percent-encode user and password so that "@", ":" or "/" in them survive.

    A user may write `rtsp://admin:p@ss:w@cam/live`; ffmpeg splits userinfo at the
    first ":" and the host at the last "@", so the password must reach it encoded.
    Already encoded parts are decoded first, so encoding twice changes nothing.
    """
    match = _USERINFO.match(uri)
    if not match:
        return uri
    userinfo = match.group("userinfo")[:-1]
    user, sep, password = userinfo.partition(":")
    encoded = quote(unquote(user), safe="")
    if sep:
        encoded += ":" + quote(unquote(password), safe="")
    rest = uri[match.end() :]
    return f"{match.group('scheme')}{encoded}@{rest}"


def strip_credentials(uri: str) -> tuple[str, str | None, str | None]:
    """Split `uri` into the URI without userinfo, the user and the password."""
    encoded = with_encoded_credentials(uri)
    parts = urlsplit(encoded)
    if parts.username is None:
        return uri, None, None
    netloc = parts.hostname or ""
    if ":" in netloc:
        netloc = f"[{netloc}]"
    if parts.port is not None:
        netloc += f":{parts.port}"
    bare = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    password = unquote(parts.password) if parts.password is not None else None
    return bare, unquote(parts.username), password
