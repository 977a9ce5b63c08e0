"""The Redis connection for state shared by several replicas (rate-limit counters)."""

from __future__ import annotations

import redis


def connect(url: str) -> redis.Redis:
    """A client for `url`, checked with a PING so a wrong URL fails at start, not mid-request."""
    client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
    client.ping()
    return client
