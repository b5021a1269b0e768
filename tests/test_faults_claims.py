"""Run claims on a real redis-server, with real processes as their owners: who
may take a claim over, and who may not."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from typing import Any

import pytest

from camtester.settings import Settings
from camtester.store import keys
from camtester.store.claims import (
    RunClaims,
    current_owner,
    hard_time_limit_s,
    process_start_ticks,
)
from tests.fixtures.services import RedisServer


@pytest.fixture
def claims(redis_factory: Any) -> RunClaims:
    server: RedisServer = redis_factory()
    return RunClaims(server.client(0), Settings(redis_url=server.url(0)))


def owner_of_a_process_that_ended() -> str:
    """The owner string a pool slot of another, now finished, process had."""
    code = "from camtester.store.claims import current_owner; print(current_owner())"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def test_a_claim_lasts_as_long_as_a_task_may(claims: RunClaims) -> None:
    assert claims.acquire("t1", 0, current_owner())

    ttl = claims.redis.ttl(keys.run_claim_key("t1", 0))
    assert 0 < ttl <= hard_time_limit_s(claims.settings)
    assert ttl == pytest.approx(hard_time_limit_s(claims.settings), abs=2)


def test_a_live_slot_elsewhere_keeps_its_claim(claims: RunClaims) -> None:
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"]) as p:
        holder = f"{socket.gethostname()}:{p.pid}:{process_start_ticks(p.pid)}:1"
        claims.redis.set(keys.run_claim_key("t2", 0), f"0|{holder}")
        try:
            assert not claims.acquire("t2", 0, current_owner())
        finally:
            p.kill()


def test_the_claim_of_a_dead_process_is_taken_over(claims: RunClaims) -> None:
    claims.redis.set(
        keys.run_claim_key("t3", 0), f"0|{owner_of_a_process_that_ended()}"
    )

    assert claims.acquire("t3", 0, current_owner())
    assert (
        claims.redis.get(keys.run_claim_key("t3", 0)).decode().endswith(current_owner())
    )


def test_a_reused_pid_does_not_keep_a_dead_claim(claims: RunClaims) -> None:
    # This process's pid, but another start time: the pid was given out again.
    holder = f"{socket.gethostname()}:{os.getpid()}:1:{threading.get_ident()}"
    claims.redis.set(keys.run_claim_key("t4", 0), f"0|{holder}")

    assert claims.acquire("t4", 0, current_owner())


def test_a_thread_of_this_process_keeps_its_claim_while_it_runs(
    claims: RunClaims,
) -> None:
    ready, release = threading.Event(), threading.Event()
    owners: list[str] = []

    def slot() -> None:
        owners.append(current_owner())
        claims.acquire("t5", 0, owners[0])
        ready.set()
        release.wait(10)

    thread = threading.Thread(target=slot)
    thread.start()
    ready.wait(10)
    while_running = claims.acquire("t5", 0, current_owner())
    release.set()
    thread.join()
    after_it_ended = claims.acquire("t5", 0, current_owner())

    assert while_running is False
    assert after_it_ended is True


def test_a_retry_takes_over_the_claim_of_its_earlier_attempt(
    claims: RunClaims,
) -> None:
    other_thread = f"{current_owner().rpartition(':')[0]}:{threading.get_ident() + 1}"
    claims.redis.set(keys.run_claim_key("t6", 0), f"0|{other_thread}")

    assert claims.acquire("t6", 0, current_owner(), attempt=1)
    assert not claims.acquire("t6", 0, other_thread, attempt=0)


def test_a_claim_held_on_another_host_is_left_to_expire(claims: RunClaims) -> None:
    claims.redis.set(keys.run_claim_key("t7", 0), "0|elsewhere:1:1:1")

    assert not claims.acquire("t7", 0, current_owner())


def test_deliveries_are_counted_per_attempt(claims: RunClaims) -> None:
    counts = [claims.count_delivery("t8", 0) for _ in range(3)]
    retry = claims.count_delivery("t8", 0, attempt=1)
    other_subtask = claims.count_delivery("t8", 1)

    assert counts == [1, 2, 3]
    assert retry == 1
    assert other_subtask == 1
