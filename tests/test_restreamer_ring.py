"""Consistent hashing of camera URIs onto restreamer hosts (pure logic)."""

from __future__ import annotations

import base64

import pytest

from camtester.errors import InvalidInput
from camtester.restreamers import (
    mask_restreamed,
    pick_host,
    restreamed_uri,
    validate_restreamer_host,
)

URIS = [f"rtsp://cam-{n}.city.example:554/stream{n % 3}" for n in range(10000)]
FOUR = [f"rs-{n}.example:8554" for n in range(4)]


def assignment(hosts: list[str]) -> dict[str, str | None]:
    return {uri: pick_host(hosts, uri) for uri in URIS}


def moved_share(before: dict[str, str | None], after: dict[str, str | None]) -> float:
    return sum(1 for uri in URIS if before[uri] != after[uri]) / len(URIS)


def test_adding_a_fifth_host_moves_about_a_fifth_of_the_cameras() -> None:
    before = assignment(FOUR)
    after = assignment([*FOUR, "rs-4.example:8554"])

    share = moved_share(before, after)

    assert share < 0.3
    # Every camera that moved, moved to the new host: none shuffled between old ones.
    assert {after[u] for u in URIS if before[u] != after[u]} == {"rs-4.example:8554"}
    # And the new host got a real share, not a token one.
    assert share > 0.1


def test_removing_a_host_moves_only_its_own_cameras() -> None:
    before = assignment(FOUR)
    after = assignment(FOUR[1:])

    moved = [u for u in URIS if before[u] != after[u]]

    assert moved == [u for u in URIS if before[u] == FOUR[0]]


def test_every_host_gets_a_fair_share() -> None:
    counts = {host: 0 for host in FOUR}
    for host in assignment(FOUR).values():
        assert host is not None
        counts[host] += 1

    assert all(1500 < n < 3500 for n in counts.values()), counts


def test_a_camera_keeps_its_host_whatever_the_order_or_its_password() -> None:
    uri = "rtsp://cam-7.city.example/live"

    chosen = {
        pick_host(FOUR, uri),
        pick_host(list(reversed(FOUR)), uri),
        pick_host(FOUR, "rtsp://admin:old@cam-7.city.example/live"),
        pick_host(FOUR, "rtsp://admin:n%40w@cam-7.city.example/live"),
    }

    assert len(chosen) == 1


def test_no_hosts_means_no_restreamer() -> None:
    assert pick_host([], "rtsp://cam.example/live") is None


def test_restreamed_uri_carries_the_whole_original_uri() -> None:
    original = "rtsp://admin:p@ss@cam.example:554/live?channel=1"

    uri = restreamed_uri("rs-1.example:8554", original)

    prefix = "rtsp://rs-1.example:8554/"
    assert uri.startswith(prefix)
    assert base64.urlsafe_b64decode(uri.removeprefix(prefix)).decode() == original


def test_masking_hides_the_credentials_inside_a_restreamed_uri() -> None:
    uri = restreamed_uri("rs-1.example:8554", "rtsp://admin:s3cret@cam.example/live")
    token = uri.rsplit("/", 1)[1]

    text = mask_restreamed(f"connection refused ({uri})")

    assert text == (
        "connection refused (rtsp://rs-1.example:8554/[rtsp://***@cam.example/live])"
    )
    assert "s3cret" not in text and token not in text
    # A path that only looks like base64 is left alone.
    assert mask_restreamed("rtsp://cam.example/channels1") == (
        "rtsp://cam.example/channels1"
    )


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("rs-1.example", "rs-1.example"),
        (" RS-1.Example:8554 ", "rs-1.example:8554"),
        ("127.0.0.1:8554", "127.0.0.1:8554"),
        ("[::1]:8554", "[::1]:8554"),
    ],
)
def test_a_restreamer_host_is_a_name_or_address_with_an_optional_port(
    given: str, kept: str
) -> None:
    assert validate_restreamer_host(given) == kept


@pytest.mark.parametrize(
    "bad",
    ["", "rs 1", "rtsp://rs-1", "rs-1:0", "rs-1:65536", "-rs", "a..b", "[nope]:1", 7],
)
def test_anything_else_is_refused(bad: object) -> None:
    with pytest.raises(InvalidInput, match="host"):
        validate_restreamer_host(bad)
