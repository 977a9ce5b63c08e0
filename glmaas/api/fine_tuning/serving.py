"""Tuned models in the registry: served from the moment their job succeeds (and on every start),
to their account only; unloaded and their files removed when deleted. Which served model a job
may start from: one whose weights are a local GGUF."""

from __future__ import annotations

import asyncio
import logging
import shutil
from pathlib import Path

from glmaas.api.state import AppState
from glmaas.engines.registry import Served, build_engine
from glmaas.jobs import fine_tuning
from glmaas.jobs.fine_tuning_runner import job_dir
from glmaas.store.tables import FineTuningJob

log = logging.getLogger("glmaas.fine_tuning")

# Sequences a tuned model decodes together: fewer than a shared model's, it has one tenant.
TUNED_SLOTS = 4


def base_gguf(state: AppState, model: str, account_id: str | None = None) -> Path | None:
    """The GGUF file of a served model that can be fine-tuned, or None."""
    path = getattr(state.registry.get(model, account_id), "path", None)
    return path if isinstance(path, Path) and path.suffix == ".gguf" else None


async def load_model(model_id: str, path: str) -> Served:
    """A tuned model's engine, loaded off the event loop."""
    return await asyncio.to_thread(build_engine, model_id, f"llamacpp:{path},slots={TUNED_SLOTS}")


def publish_model(state: AppState, job: FineTuningJob, engine: Served) -> None:
    """Serve a succeeded job's model from now on, to its account only."""
    state.registry.add(job.fine_tuned_model or "", engine, account_id=job.account_id)


async def serve_model(state: AppState, job: FineTuningJob) -> None:
    """Load the job's tuned model into the registry, visible to its account only."""
    if job.fine_tuned_model is None or job.model_path is None or not Path(job.model_path).is_file():
        log.error("fine-tuning job %s succeeded but its model file is missing", job.id)
        return
    publish_model(state, job, await load_model(job.fine_tuned_model, job.model_path))


async def serve_all(state: AppState) -> None:
    """Serve every tuned model that has not been deleted (at start)."""
    with state.db.session() as session:
        jobs = fine_tuning.served_models(session)
        session.expunge_all()
    for job in jobs:
        try:
            await serve_model(state, job)
        except Exception:
            log.exception("cannot serve the tuned model of job %s", job.id)


async def unserve_model(state: AppState, job: FineTuningJob) -> None:
    """Stop serving a deleted tuned model and remove its files."""
    engine = state.registry.remove(job.fine_tuned_model or "")
    if engine is not None:
        await engine.close()
    if state.data_dir is not None:
        await asyncio.to_thread(shutil.rmtree, job_dir(state.data_dir, job.id), True)
