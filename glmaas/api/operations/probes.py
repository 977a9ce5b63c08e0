"""The probes: `/healthz` (the process answers; nothing else is checked, so it stays cheap) and
`/readyz` (this replica can serve: the database answers with its schema at the newest
migration, every model is loaded, Redis answers when limits are shared through it, and no
shutdown has begun). Both answer a JSON object of parts; `/readyz` answers 503 naming the parts
that fail. Neither needs a credential, and neither says more than a part's state (details of a
failure go to the log)."""

from __future__ import annotations

import logging
from functools import cache

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse

from glmaas.api.requests import app_state
from glmaas.api.state import AppState
from glmaas.store.db import schema_heads, schema_revisions

log = logging.getLogger("glmaas.readiness")

OK = "ok"
# A check slower than this fails the probe: a replica whose database takes seconds is not ready.
CHECK_TIMEOUT_S = 3.0


async def healthz(_request: Request) -> JSONResponse:
    return JSONResponse({"status": OK})


async def readyz(request: Request) -> JSONResponse:
    state = app_state(request)
    parts: dict[str, object] = {}
    if request.app.state.operations.drain.draining:
        parts["shutdown"] = "draining"
    parts["database"] = await _checked("database", _database, state)
    parts["models"] = _models(state)
    if state.redis is not None:
        parts["redis"] = await _checked("redis", _redis, state)
    failing = [name for name, part in parts.items() if not _ok(part)]
    body = {"status": "ready" if not failing else "not ready", "failing": failing, "parts": parts}
    return JSONResponse(body, status_code=503 if failing else 200, headers={"cache-control": "no-store"})


def _ok(part: object) -> bool:
    if isinstance(part, dict):
        return all(_ok(p) for p in part.values())
    return part == OK


async def _checked(name: str, check, state: AppState) -> str:  # type: ignore[no-untyped-def]
    """`check(state)` in a worker thread (both talk to a server over the network), within
    `CHECK_TIMEOUT_S`; its verdict, or "unreachable" with the reason logged."""
    try:
        with anyio.fail_after(CHECK_TIMEOUT_S):
            return await anyio.to_thread.run_sync(check, state, abandon_on_cancel=True)
    except TimeoutError:
        log.warning("readiness: %s did not answer in %g s", name, CHECK_TIMEOUT_S)
        return "unreachable"
    except Exception as exc:
        log.warning("readiness: %s unreachable: %s", name, exc)
        return "unreachable"


@cache
def _heads() -> frozenset[str]:
    return schema_heads()


def _database(state: AppState) -> str:
    at = schema_revisions(state.db.engine)
    if at != _heads():
        return f"schema at {','.join(sorted(at)) or 'nothing'}; this version needs {','.join(sorted(_heads()))}"
    return OK


def _redis(state: AppState) -> str:
    state.redis.ping()
    return OK


def _models(state: AppState) -> dict[str, str]:
    """Every model the replica serves. Engines are loaded before the server answers at all, so
    each is ok here; an upstream pool's members are watched by their own health checks (see
    `glmaas_upstream_healthy`): one upstream down must not take every replica out of service."""
    return {info.model_id: OK for info in state.registry.models()}
