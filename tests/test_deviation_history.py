"""Deviation history: filters, newest first, pages, TTL, and no full scans.

Records are written with DeviationStore into the stack's task store (the one
the API reads), each test under a region and targets of its own, at detection
times fixed by the test, so every expected list is known exactly.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import pytest

from camtester.settings import Settings
from camtester.store import keys
from camtester.store.deviations import DeviationStore
from tests.fixtures.services import ApiClient, Stack

KINDS = ("black", "freeze", "silence")
BASE = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)


def stamp(second: int) -> str:
    return (BASE + timedelta(seconds=second)).isoformat().replace("+00:00", "Z")


def record(
    target: str, kind: str, second: int, geo: str, n: int, severity: str = "warning"
) -> dict[str, Any]:
    return {
        "id": f"{geo}-{n}",
        "task_id": f"task-{geo}-{n}",
        "target": target,
        "geo_location": geo,
        "kind": kind,
        "severity": severity,
        "value": float(n),
        "threshold": 1.0,
        "detected_at": stamp(second),
    }


class History:
    """25 records in one region over two targets and three kinds.

    Record n is detected at second n // 2 (so pairs share a millisecond, which the
    cursor must handle), on target A when n is even, B when odd, kind n % 3.
    """

    def __init__(self, store: DeviationStore) -> None:
        self.geo = f"g{uuid.uuid4().hex[:10]}"
        self.a = f"rtsp://***@cam-a-{self.geo}.example/live"
        self.b = f"cam-b-{self.geo}.example"
        self.records = [
            record(self.a if n % 2 == 0 else self.b, KINDS[n % 3], n // 2, self.geo, n)
            for n in range(25)
        ]
        store.add(self.records)

    def newest_first(self, **wanted: Any) -> list[str]:
        chosen = [
            r
            for r in self.records
            if all(r[k] == v for k, v in wanted.items() if k != "since")
            and r["detected_at"] >= wanted.get("since", "")
        ]
        # Equal times come back in the order of the sorted set: ids descending.
        chosen.sort(key=lambda r: (r["detected_at"], r["id"]), reverse=True)
        return [r["id"] for r in chosen]


@pytest.fixture
def store(stack: Stack) -> DeviationStore:
    return DeviationStore(Settings(redis_url=stack.redis.url(0)))


@pytest.fixture
def history(store: DeviationStore) -> History:
    return History(store)


def ids(response: Any) -> list[str]:
    assert response.status_code == 200, response.text
    return [r["id"] for r in response.json()["deviations"]]


def test_filters_by_target_kind_region_and_since(
    api: ApiClient, history: History
) -> None:
    geo = history.geo

    by_target = api.get("/deviations", params={"target": history.b})
    by_kind = api.get("/deviations", params={"kind": "freeze", "geo_location": geo})
    both = api.get("/deviations", params={"target": history.a, "kind": "black"})
    since = api.get(
        "/deviations", params={"geo_location": geo, "since": stamp(9), "limit": 1000}
    )

    assert ids(by_target) == history.newest_first(target=history.b)
    assert len(ids(by_target)) == 12
    assert ids(by_kind) == history.newest_first(kind="freeze", geo_location=geo)
    assert ids(both) == history.newest_first(target=history.a, kind="black")
    # `since` is inclusive: records 18 and 19 were detected at second 9.
    assert ids(since) == history.newest_first(since=stamp(9))
    assert ids(since)[-2:] == [f"{geo}-19", f"{geo}-18"]


def test_pages_follow_the_cursor_without_gaps_or_repeats(
    api: ApiClient, history: History
) -> None:
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params = {"geo_location": history.geo, "limit": 4}
        if cursor:
            params["cursor"] = cursor
        page = api.get("/deviations", params=params).json()
        seen += [r["id"] for r in page["deviations"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break

    assert seen == history.newest_first(geo_location=history.geo)
    assert len(seen) == 25
    assert pages == 7


def test_target_route_answers_for_a_uri_target(
    api: ApiClient, history: History
) -> None:
    path = f"/targets/{quote(history.a, safe='')}/deviations"

    response = api.get(path, params={"kind": "silence"})
    everything = api.get(path)

    assert ids(response) == history.newest_first(target=history.a, kind="silence")
    assert ids(everything) == history.newest_first(target=history.a)
    assert {r["target"] for r in everything.json()["deviations"]} == {history.a}


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "many"}, "limit"),
        ({"since": "yesterday"}, "since"),
        ({"since": "2026-01-01T00:00:00"}, "since"),
        ({"cursor": "not-a-cursor"}, "cursor"),
    ],
)
def test_a_bad_filter_is_400_naming_it(
    api: ApiClient, params: dict[str, str], field: str
) -> None:
    response = api.get("/deviations", params=params)

    assert response.status_code == 400
    assert field in response.json()["message"]


def test_records_and_indexes_expire_with_the_result_ttl(
    stack: Stack, history: History
) -> None:
    client = stack.redis.client(0)
    ttl = Settings().result_ttl_s
    index = keys.deviation_index_key("target", history.a)

    record_ttls = [client.ttl(keys.deviation_key(r["id"])) for r in history.records]

    assert all(0 < t <= ttl for t in record_ttls)
    assert 0 < client.ttl(index) <= ttl


def test_a_query_reads_only_the_records_of_its_index(redis_factory: Any) -> None:
    server = redis_factory()
    store = DeviationStore(Settings(redis_url=server.url(0)))
    crowd = [
        record(f"cam-{n}.example", "black", n % 50, "crowd", n) for n in range(2000)
    ]
    store.add(crowd)
    store.add([record("wanted.example", "freeze", s, "few", s) for s in range(3)])
    client = server.client(0)
    client.config_resetstat()

    found, cursor = store.query(target="wanted.example")

    stats = client.info("commandstats")
    assert [r["id"] for r in found] == ["few-2", "few-1", "few-0"]
    assert cursor is None
    assert stats["cmdstat_get"]["calls"] == 3
    assert not any(name in stats for name in ("cmdstat_scan", "cmdstat_keys"))


def test_the_last_page_of_a_combined_filter_has_no_cursor(redis_factory: Any) -> None:
    # The kind filter is applied to the target's index: records of other kinds
    # after the last match must not promise another page.
    server = redis_factory()
    store = DeviationStore(Settings(redis_url=server.url(0)))
    store.add([record("cam.example", "black", 10, "new", 0)])
    store.add([record("cam.example", "freeze", s, "old", s) for s in range(5)])

    found, cursor = store.query(target="cam.example", kind="black", limit=1)

    assert [r["id"] for r in found] == ["new-0"]
    assert cursor is None


def test_a_cursor_of_a_combined_filter_leads_to_the_next_match(
    redis_factory: Any,
) -> None:
    server = redis_factory()
    store = DeviationStore(Settings(redis_url=server.url(0)))
    black = [record("cam.example", "black", s, "b", s) for s in (1, 3, 5)]
    freeze = [record("cam.example", "freeze", s, "f", s) for s in (2, 4, 6)]
    store.add(black + freeze)

    first, cursor = store.query(target="cam.example", kind="black", limit=2)
    rest, last = store.query(target="cam.example", kind="black", limit=2, cursor=cursor)

    assert [r["id"] for r in first] == ["b-5", "b-3"]
    assert [r["id"] for r in rest] == ["b-1"]
    assert last is None


def test_credentials_never_reach_a_record_a_response_or_a_log(
    api: ApiClient, stack: Stack, logs_dir: Any
) -> None:
    # Nothing listens on port 9 of loopback: the probe is refused at once and
    # leaves a stream_unavailable record.
    secret = f"pw-{uuid.uuid4().hex}"
    uri = f"rtsp://admin:{secret}@127.0.0.1:9/cam-{uuid.uuid4().hex[:8]}"
    masked = uri.replace(f"admin:{secret}", "***")
    task_id = api.submit(
        {"type": "probe", "geo_location": "local", "payload": {"uri": uri}}
    )
    task = api.wait(task_id)

    bodies = [
        api.get(f"/tasks/{task_id}"),
        api.get(f"/tasks/{task_id}/result"),
        api.get("/deviations", params={"target": uri}),
        api.get("/deviations", params={"target": masked}),
        api.get(f"/targets/{quote(uri, safe='')}/deviations"),
        api.get(f"/targets/{quote(masked, safe='')}/deviations"),
    ]

    assert task["result"]["error"]["code"] == "refused"
    assert task["payload"]["uri"] == masked
    for response in bodies:
        assert response.status_code == 200
        assert secret not in response.text
    for response in bodies[2:]:
        records = response.json()["deviations"]
        assert [(r["task_id"], r["kind"]) for r in records] == [
            (task_id, "stream_unavailable")
        ]
        assert records[0]["target"] == masked
    for log in ("worker.log", "api.log"):
        assert secret not in (logs_dir / log).read_text()
