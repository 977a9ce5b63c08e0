"""Rate limits shared by many replicas: the same algorithm as `LocalLimiter` (see `limits.py`),
checked and applied for every scope of a request in one Lua script, on Redis's own clock."""

from __future__ import annotations

import redis
from redis.commands.core import Script
from redis.exceptions import NoScriptError

from glmaas.platform.errors import RateLimited
from glmaas.platform.limits import BUCKETS, Ask, Grant, Remaining, Scope, answer

# KEYS: per scope, its counts hash then its in-flight sorted set.
# ARGV: request id, tokens, scope count, then per scope rpm, tpm, concurrency (-1: no limit).
_ACQUIRE = """
local now = tonumber(redis.call('TIME')[1])
local rid, tokens, n = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local first_req, first_tok = -1, -1
for i = 1, n do
  local h, z = KEYS[2*i-1], KEYS[2*i]
  local rpm, tpm, conc = tonumber(ARGV[3*i+1]), tonumber(ARGV[3*i+2]), tonumber(ARGV[3*i+3])
  redis.call('ZREMRANGEBYSCORE', z, '-inf', now - 3600)
  if conc >= 0 and redis.call('ZCARD', z) + 1 > conc then
    return {i, 'concurrency', conc, 1, now}
  end
  local flat = redis.call('HGETALL', h)
  local req, tok, old_r, old_t = 0, 0, now, now
  for j = 1, #flat, 2 do
    local f, v = flat[j], tonumber(flat[j+1])
    local s = tonumber(string.sub(f, 3))
    if s <= now - BUCKETS then
      redis.call('HDEL', h, f)
    elseif string.sub(f, 1, 1) == 'r' then
      req = req + v
      if v > 0 and s < old_r then old_r = s end
    else
      tok = tok + v
      if v > 0 and s < old_t then old_t = s end
    end
  end
  if rpm >= 0 and req + 1 > rpm then
    return {i, 'rpm', rpm, math.max(1, old_r + BUCKETS - now), now}
  end
  if tpm >= 0 and tok + tokens > tpm then
    local retry = 60
    if tokens <= tpm then retry = math.max(1, old_t + BUCKETS - now) end
    return {i, 'tpm', tpm, retry, now}
  end
  if i == 1 then
    if rpm >= 0 then first_req = rpm - req - 1 end
    if tpm >= 0 then first_tok = tpm - tok - tokens end
  end
end
for i = 1, n do
  local h, z = KEYS[2*i-1], KEYS[2*i]
  redis.call('HINCRBY', h, 'r:' .. now, 1)
  redis.call('HINCRBY', h, 't:' .. now, tokens)
  redis.call('EXPIRE', h, BUCKETS * 2)
  redis.call('ZADD', z, now, rid)
  redis.call('EXPIRE', z, 7200)
end
return {0, 'ok', first_req, first_tok, now}
""".replace("BUCKETS", str(BUCKETS))

# KEYS as above; ARGV: request id, tokens to give back, the second they were counted in.
_RELEASE = """
for i = 1, #KEYS / 2 do
  local h, z = KEYS[2*i-1], KEYS[2*i]
  redis.call('ZREM', z, ARGV[1])
  if tonumber(ARGV[2]) > 0 and redis.call('HEXISTS', h, 't:' .. ARGV[3]) == 1 then
    redis.call('HINCRBY', h, 't:' .. ARGV[3], -tonumber(ARGV[2]))
  end
end
return 0
"""


def _keys(prefix: str, scopes: list[str]) -> list[str]:
    out = []
    for name in scopes:
        out += [f"{prefix}:{name}:counts", f"{prefix}:{name}:inflight"]
    return out


class RedisLimiter:
    """Limits shared through Redis; same interface as `LocalLimiter`."""

    in_process = False

    def __init__(self, client: redis.Redis, prefix: str = "glmaas:limits") -> None:
        self.client = client  # also pinged by the readiness probe
        self._prefix = prefix
        self._acquire = client.register_script(_ACQUIRE)
        self._release = client.register_script(_RELEASE)

    def acquire(self, scopes: list[Scope], request_id: str, tokens: int) -> Grant:
        live, keys, args = self._acquire_call(scopes, request_id, tokens)
        if not live:
            return Grant(request_id, (), tokens, 0)
        return _granted(live, request_id, tokens, self._acquire(keys=keys, args=args))

    def acquire_many(self, asks: list[Ask]) -> list[Grant | Exception]:
        """`acquire` for each of `asks`, in one round trip: the scripts go out as one pipeline
        (each still atomic on its own, in order). Each grant, or the error that refused it."""
        if len(asks) == 1:
            return [answer(self.acquire, *asks[0])]
        calls = [self._acquire_call(*ask) for ask in asks]
        replies = iter(self._pipelined(self._acquire, [(keys, args) for live, keys, args in calls if live]))
        out: list[Grant | Exception] = []
        for (scopes, request_id, tokens), (live, _, _) in zip(asks, calls, strict=True):
            if not live:
                out.append(Grant(request_id, (), tokens, 0))
                continue
            reply = next(replies)
            out.append(reply if isinstance(reply, Exception) else answer(_granted, live, request_id, tokens, reply))
        return out

    def _acquire_call(self, scopes: list[Scope], request_id: str, tokens: int) -> tuple[list[Scope], list, list]:
        live = [s for s in scopes if not s.spec.empty]
        args: list = [request_id, tokens, len(live)]
        for s in live:
            args += [_or_none(s.spec.rpm), _or_none(s.spec.tpm), _or_none(s.spec.concurrency)]
        return live, _keys(self._prefix, [s.name for s in live]), args

    def release(self, grant: Grant, used_tokens: int) -> None:
        if grant.scopes:
            self._release(keys=_keys(self._prefix, list(grant.scopes)),
                          args=[grant.request_id, max(0, grant.tokens - used_tokens), grant.second])

    def release_many(self, releases: list[tuple[Grant, int]]) -> None:
        """`release` for each (grant, used tokens), in one round trip."""
        calls = [(_keys(self._prefix, list(grant.scopes)), [grant.request_id, max(0, grant.tokens - used), grant.second])
                 for grant, used in releases if grant.scopes]
        if len(calls) == 1:
            self._release(keys=calls[0][0], args=calls[0][1])
        elif calls:
            for reply in self._pipelined(self._release, calls):
                if isinstance(reply, Exception):
                    raise reply

    def forget(self, request_id: str, scopes: list[str]) -> None:
        if scopes:
            self._release(keys=_keys(self._prefix, scopes), args=[request_id, 0, 0])

    def _pipelined(self, script: Script, calls: list[tuple[list, list]]) -> list:
        """Run `script` once per (keys, args) in one pipeline; each reply, or the error it
        raised. A Redis that lost its scripts (restarted, flushed) is given them again."""
        def send(calls: list[tuple[list, list]]) -> list:
            pipe = self.client.pipeline(transaction=False)
            for keys, args in calls:
                pipe.evalsha(script.sha, len(keys), *keys, *args)
            return pipe.execute(raise_on_error=False)

        replies = send(calls)
        missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if missing:  # a call refused for want of its script did not run: run it again
            self.client.script_load(script.script)
            for i, reply in zip(missing, send([calls[i] for i in missing]), strict=True):
                replies[i] = reply
        return replies


def _granted(live: list[Scope], request_id: str, tokens: int, reply: list) -> Grant:
    """The grant the acquire script's `reply` gives, or its refusal raised as `RateLimited`."""
    index, kind, a, b, now = reply
    if int(index) > 0:
        raise RateLimited(live[int(index) - 1].name, kind.decode() if isinstance(kind, bytes) else kind,
                          int(a), float(b))
    spec = live[0].spec
    remaining = Remaining(None if spec.rpm is None else max(0, int(a)),
                          None if spec.tpm is None else max(0, int(b)), spec.rpm, spec.tpm)
    return Grant(request_id, tuple(s.name for s in live), tokens, int(now), remaining)


def _or_none(value: int | None) -> int:
    return -1 if value is None else value
