"""`/restreamers`: hosts per region kept in Redis, and the URI -> host lookup."""

from __future__ import annotations

import uuid

import pytest

from camtester.restreamers import pick_host
from tests.fixtures.services import ApiClient, Stack

CAMERA = "rtsp://admin:secret@cam-3.city.example/live"


@pytest.fixture
def region() -> str:
    return f"rs{uuid.uuid4().hex[:10]}"


def register(api: ApiClient, geo: str, host: str) -> int:
    response = api.post("/restreamers", json={"geo_location": geo, "host": host})
    return response.status_code


def lookup(api: ApiClient, geo: str, uri: str) -> tuple[int, dict[str, str]]:
    response = api.get("/restreamers/lookup", params={"geo_location": geo, "uri": uri})
    return response.status_code, response.json()


def test_hosts_are_kept_per_region_in_redis(
    api: ApiClient, stack: Stack, region: str
) -> None:
    other = f"{region}x"

    statuses = [
        register(api, region, "rs-2.example:8554"),
        register(api, region, "RS-1.example:8554"),
        register(api, region, "rs-1.example:8554"),
        register(api, other, "rs-9.example"),
    ]

    assert statuses == [201, 201, 200, 201]
    listing = api.get("/restreamers", params={"geo_location": region}).json()
    assert listing == {
        "restreamers": {region: ["rs-1.example:8554", "rs-2.example:8554"]}
    }
    everything = api.get("/restreamers").json()["restreamers"]
    assert everything[other] == ["rs-9.example"]
    members = stack.redis.client(0).smembers(f"camtester:restreamers:{region}")
    assert members == {b"rs-1.example:8554", b"rs-2.example:8554"}


def test_lookup_answers_the_ring_host_and_follows_changes(
    api: ApiClient, region: str
) -> None:
    hosts = [f"rs-{n}.example:8554" for n in range(4)]
    for host in hosts:
        register(api, region, host)

    status, answer = lookup(api, region, CAMERA)
    assert status == 200
    assert answer == {"geo_location": region, "host": pick_host(hosts, CAMERA)}

    removed = api.delete(f"/restreamers/{region}/{answer['host']}")
    status, moved = lookup(api, region, CAMERA)
    remaining = [h for h in hosts if h != answer["host"]]

    assert removed.status_code == 204
    assert status == 200
    assert moved["host"] == pick_host(remaining, CAMERA)
    assert moved["host"] != answer["host"]
    assert "secret" not in str(moved)


def test_a_region_without_restreamers_is_404(api: ApiClient, region: str) -> None:
    status, answer = lookup(api, region, CAMERA)

    assert status == 404
    assert region in answer["message"]


def test_removing_an_unknown_host_is_404(api: ApiClient, region: str) -> None:
    register(api, region, "rs-1.example")

    response = api.delete(f"/restreamers/{region}/rs-2.example")

    assert response.status_code == 404


@pytest.mark.parametrize(
    ("path", "field"),
    [("BAD/rs-1.example", "geo_location"), ("north/rs-1:99999", "host")],
)
def test_removing_with_a_malformed_region_or_host_is_400(
    api: ApiClient, path: str, field: str
) -> None:
    response = api.delete(f"/restreamers/{path}")

    assert response.status_code == 400
    assert field in response.json()["message"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"geo_location": "Bad Region", "host": "rs-1.example"}, "geo_location"),
        ({"geo_location": "north", "host": "rs 1"}, "host"),
        ({"geo_location": "north", "host": "rs-1:99999"}, "host"),
        ({"geo_location": "north"}, "host"),
    ],
)
def test_a_bad_registration_is_400_naming_the_field(
    api: ApiClient, body: dict[str, str], field: str
) -> None:
    response = api.post("/restreamers", json=body)

    assert response.status_code == 400
    assert field in response.json()["message"]


@pytest.mark.parametrize(
    "uri", ["", "ftp://cam.example/x", "rtsp://cam.example:99999/x", "rtsp://[zz/x"]
)
def test_a_bad_lookup_uri_is_400(api: ApiClient, region: str, uri: str) -> None:
    register(api, region, "rs-1.example")

    status, answer = lookup(api, region, uri)

    assert status == 400
    assert "uri" in answer["message"]
