"""Restreamer hosts per region, kept in Redis sets without expiry."""

from __future__ import annotations

from typing import Any

from camtester.settings import Settings
from camtester.store import keys
from camtester.store.connection import connect, store_errors


class RestreamerStore:
    """Register, list and remove restreamer hosts per region."""

    def __init__(self, settings: Settings, client: Any = None) -> None:
        self.settings = settings
        self.redis = client if client is not None else connect(settings)

    def add(self, geo_location: str, host: str) -> bool:
        """Register `host`; False if it was registered already."""
        with store_errors(self.settings.redis_url):
            pipe = self.redis.pipeline(transaction=False)
            pipe.sadd(keys.restreamers_key(geo_location), host)
            pipe.sadd(keys.RESTREAMER_REGIONS_KEY, geo_location)
            added, _ = pipe.execute()
        return bool(added)

    def remove(self, geo_location: str, host: str) -> bool:
        """Forget `host`; False if it was not there."""
        with store_errors(self.settings.redis_url):
            return bool(self.redis.srem(keys.restreamers_key(geo_location), host))

    def hosts(self, geo_location: str) -> list[str]:
        """The hosts of one region, sorted."""
        with store_errors(self.settings.redis_url):
            members = self.redis.smembers(keys.restreamers_key(geo_location))
        return sorted(m.decode() for m in members)

    def all_regions(self) -> dict[str, list[str]]:
        """Every region that ever had a host, with its current hosts."""
        with store_errors(self.settings.redis_url):
            regions = sorted(
                m.decode() for m in self.redis.smembers(keys.RESTREAMER_REGIONS_KEY)
            )
        listing = {region: self.hosts(region) for region in regions}
        return {region: hosts for region, hosts in listing.items() if hosts}
