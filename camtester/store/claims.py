"""Claims that make one measurement run once, even when its message comes twice.

A claim is a key set with NX for as long as the longest task may run. A message
redelivered because its worker died finds the claim of a dead process: on the
same host the pid tells, and the claim is taken over; from another host the claim
expires before the broker's visibility timeout hands the message on.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

from camtester.settings import Settings
from camtester.store import keys
from camtester.store.connection import store_errors

logger = logging.getLogger(__name__)


class RunClaims:
    """Acquire the right to measure subtask `index` of a task."""

    def __init__(self, client: Any, settings: Settings) -> None:
        self.redis = client
        self.settings = settings
        self.ttl_s = int(
            settings.max_sample_duration_s + 4 * settings.connect_timeout_s + 60
        )

    def acquire(self, task_id: str, index: int, owner: str) -> bool:
        """True if this owner may measure; False if a live process already does."""
        key = keys.run_claim_key(task_id, index)
        with store_errors(self.settings.redis_url):
            if self.redis.set(key, owner, nx=True, ex=self.ttl_s):
                return True
            holder = self.redis.get(key)
            if holder is None:
                return bool(self.redis.set(key, owner, nx=True, ex=self.ttl_s))
            holder = holder.decode()
            if holder == owner or not _holder_alive(holder):
                logger.info("claim of %s on %s taken over by %s", holder, key, owner)
                self.redis.set(key, owner, ex=self.ttl_s)
                return True
        return False


def _holder_alive(holder: str) -> bool:
    """Whether the process named `host:pid:thread` still runs.

    Off this host it cannot be known, so the claim is left to expire.
    """
    host, _, rest = holder.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
