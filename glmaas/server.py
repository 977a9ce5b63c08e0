"""Putting the parts together: open the store, load the models, build the app, serve it."""

from __future__ import annotations

import logging
import sys
from functools import partial
from pathlib import Path

from glmaas.config import Settings
from glmaas.platform.secrets import SecretBox, load_master_key
from glmaas.store.db import Database, open_database

log = logging.getLogger("glmaas")


def open_platform(settings: Settings) -> tuple[Database, SecretBox]:
    """The database (migrated) and the secret box of a deployment."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db = open_database(settings.db_url())
    return db, SecretBox(load_master_key(settings.data_dir))


def build_limiter(settings: Settings):  # type: ignore[no-untyped-def]
    """Limits in this process, or in Redis when several replicas share them."""
    if settings.redis_url:
        from glmaas.platform.limits_redis import RedisLimiter
        from glmaas.store.redis import connect

        return RedisLimiter(connect(settings.redis_url))
    from glmaas.platform.limits import LocalLimiter

    return LocalLimiter()


def build_state(settings: Settings):  # type: ignore[no-untyped-def]
    from glmaas.api.state import AppState
    from glmaas.engines.registry import ModelRegistry
    from glmaas.jobs.gate import SlotGate
    from glmaas.platform import upstream_keys
    from glmaas.platform.admin_token import load_admin_token
    from glmaas.platform.auth import Authenticator
    from glmaas.platform.metering import Meter
    from glmaas.platform.recovery import heartbeat, new_owner_id, recover
    from glmaas.store.blobs import blob_store_for

    db, box = open_platform(settings)
    limiter = build_limiter(settings)
    owner = new_owner_id()
    with db.session() as session, session.begin():
        heartbeat(session, owner)
    recovered = recover(db.session, owner, limiter.forget)
    if recovered:
        log.warning("settled %d requests left open by a replica that stopped", recovered)
    registry = ModelRegistry.from_options(settings.models, with_default=settings.default_model,
                                          files=settings.model_files, stored_keys=upstream_keys.opener(db.session, box))
    meter = Meter(db.engine, limiter, owner)

    def slots_of(model: str) -> int | None:
        return getattr(registry.get(model), "slots", None)

    return AppState(
        db=db,
        registry=registry,
        authenticator=Authenticator(db.engine, box),
        meter=meter,
        box=box,
        admin_token=load_admin_token(settings.data_dir),
        blobs=blob_store_for(settings.db_url(), settings.data_dir),
        gate=SlotGate(settings.batch_slot_share, slots_of, meter.open_by_model),
        max_body_bytes=settings.max_body_bytes,
        request_timeout=settings.request_timeout,
        usage_retention_days=settings.usage_retention_days,
        max_file_bytes=settings.max_file_bytes,
        batch_workers=settings.batch_workers,
        batch_price_percent=settings.batch_price_percent,
        batch_lease_s=settings.batch_lease_s,
        batch_max_attempts=settings.batch_max_attempts,
        redis=getattr(limiter, "client", None),
        drain_timeout=settings.drain_timeout,
        log_content=settings.log_content,
        data_dir=settings.data_dir,
        fine_tuning_jobs=settings.fine_tuning_jobs,
        fine_tuning_threads=settings.fine_tuning_threads,
    )


def configure_logging(log_format: str) -> None:
    """Log lines as text, or (`json`) one JSON object per line, uvicorn's own lines included."""
    from glmaas.api.operations.request_log import JsonLines, TextLines

    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonLines())
    else:
        handler.setFormatter(TextLines("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    # No format here prints the thread or the process; looking them up was about a fifth of making
    # a log record in a one-off timing (2.0 against 1.6 µs), and every request makes one.
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per upstream call is noise
    logging.getLogger("alembic").setLevel(logging.WARNING)  # one line per migration step, every start


def reserved_memory(registry) -> list[str]:  # type: ignore[no-untyped-def]
    """One line per model that reserves memory at start (a llama.cpp model: weights, KV cache)."""
    lines = []
    for info in registry.models():
        held = getattr(registry.get(info.model_id), "reservation", None)
        if held is not None:
            lazily = ", resident as sequences use them" if held.kv_released_bytes else ""
            lines.append(f"{info.model_id} reserved {held.model_bytes / 2**20:.0f} MiB of weights and "
                         f"{held.kv_bytes / 2**20:.0f} MiB of KV cache ({held.kv_cells} cells of "
                         f"{held.kv_bytes_per_cell / 1024:.1f} KiB{lazily})")
    return lines


def run(state, settings: Settings, *, host: str, port: int) -> None:  # type: ignore[no-untyped-def]
    import uvicorn
    from prometheus_client import start_http_server

    from glmaas.api.app import create_app
    from glmaas.api.operations.server import DRAIN_AFTERMATH_S, DrainingServer

    app = create_app(state)
    operations = app.state.operations
    if settings.metrics_port is not None:
        start_http_server(settings.metrics_port, addr=settings.metrics_host, registry=operations.metrics.registry)
    models = ", ".join(info.model_id for info in state.registry.models())
    say = log.info if settings.log_format == "json" else partial(print, flush=True)
    say(f"glmaas: serving {models} on http://{host}:{port}  (data dir {settings.data_dir})")
    if settings.metrics_port is not None:
        say(f"glmaas: metrics on http://{settings.metrics_host}:{settings.metrics_port}/metrics")
    for line in reserved_memory(state.registry):
        say(f"glmaas: {line}")
    script = Path(sys.executable).parent / "glmaas"
    command = str(script) if script.exists() else "glmaas"
    say(f"glmaas: get an API key with: {command} keys create --data-dir {settings.data_dir}")
    # uvicorn's own loggers go through the handler above (log_config=None).
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, log_config=None,
                            timeout_graceful_shutdown=DRAIN_AFTERMATH_S)
    DrainingServer(config, operations.drain).run()
