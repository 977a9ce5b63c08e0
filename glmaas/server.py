"""Putting the parts together: open the store, load the models, build the app, serve it."""

from __future__ import annotations

import logging

from glmaas.config import Settings
from glmaas.platform.secrets import SecretBox, load_master_key
from glmaas.store.db import Database, open_database


def open_platform(settings: Settings) -> tuple[Database, SecretBox]:
    """The database (migrated) and the secret box of a deployment."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db = open_database(settings.db_url())
    return db, SecretBox(load_master_key(settings.data_dir))


def build_state(settings: Settings):  # type: ignore[no-untyped-def]
    from glmaas.api.state import AppState
    from glmaas.engines.registry import ModelRegistry
    from glmaas.platform.auth import Authenticator
    from glmaas.platform.metering import Meter

    db, box = open_platform(settings)
    registry = ModelRegistry.from_options(settings.models, with_default=settings.default_model)
    return AppState(
        db=db,
        registry=registry,
        authenticator=Authenticator(db.session, box),
        meter=Meter(db.session),
        max_body_bytes=settings.max_body_bytes,
    )


def run(state, settings: Settings, *, host: str, port: int) -> None:  # type: ignore[no-untyped-def]
    import uvicorn

    from glmaas.api.app import create_app

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    models = ", ".join(info.model_id for info in state.registry.models())
    print(f"glmaas: serving {models} on http://{host}:{port}  (data dir {settings.data_dir})", flush=True)
    print(f"glmaas: get an API key with: glmaas keys create --data-dir {settings.data_dir}", flush=True)
    uvicorn.run(create_app(state), host=host, port=port, log_level="warning", access_log=False)
