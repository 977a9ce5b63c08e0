"""The fine-tuning runner of one `glmaas serve` replica: it leases queued jobs (at most
`max_jobs` at a time, one by default: training takes every core but one), trains each in a worker
process of its own (`python -m glmaas.jobs.finetune_worker`, never in the server's event loop),
writes the worker's events and checkpoints into the store as they come, renews the lease, stops the
worker when the job is cancelled, and at the end settles the job and hands its model to `serve`
(which loads it into the registry without a restart).

A job's files live under `DATA_DIR/fine_tuning/JOB_ID/`. When the server is killed, the worker
exits with it (`--exit-with-parent`); the job's lease is released when a replica sees the server
stopped, and the next take resumes the training from the job's last epoch checkpoint.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from pathlib import Path

import glmaas
from glmaas.jobs import fine_tuning
from glmaas.jobs.fine_tuning import JobStatus
from glmaas.jobs.finetune_worker import JOB_FILE, TRAINING_FILE, VALIDATION_FILE
from glmaas.platform import files
from glmaas.store.blobs import BlobStore
from glmaas.store.db import Database
from glmaas.store.tables import FineTuningJob
from glmaas.training.finetune_config import FineTuneConfig

log = logging.getLogger("glmaas.fine_tuning")

POLL_S = 1.0
LOG_TAIL = 2000  # characters of a failed worker's stderr kept in the job's error
# The GGUF path of a job's base model (as its account sees it), or None when it cannot be
# fine-tuned here.
BasePath = Callable[[str, str], Path | None]
# Load a tuned model (its id, its GGUF) for serving; then serve it, once its job has succeeded.
Load = Callable[[str, str], Awaitable[object]]
Publish = Callable[[FineTuningJob, object], None]


def _worker_env() -> dict[str, str]:
    """The server's environment, with this very glmaas first on the path: the worker runs the
    code the server runs, wherever it is started from."""
    source = str(Path(glmaas.__file__).resolve().parent.parent)
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": source + (os.pathsep + path if path else "")}


def job_dir(data_dir: Path, job_id: str) -> Path:
    return data_dir / "fine_tuning" / job_id


class FineTuningRunner:
    def __init__(self, db: Database, blobs: BlobStore, owner: str, data_dir: Path, base_path: BasePath,
                 load: Load, publish: Publish, *, max_jobs: int = 1, lease_s: float = 30.0,
                 threads: int | None = None) -> None:
        self.db, self.blobs, self.owner, self.data_dir = db, blobs, owner, data_dir
        self.base_path, self.load, self.publish = base_path, load, publish
        self.max_jobs, self.lease_s, self.threads = max_jobs, lease_s, threads
        self.running: dict[str, asyncio.Task] = {}

    async def run(self) -> None:
        """Runs until cancelled; cancelling stops the workers and leaves their jobs to resume."""
        try:
            while True:
                try:
                    self._take_jobs()
                except Exception:
                    log.exception("taking fine-tuning jobs failed")
                await asyncio.sleep(POLL_S)
        finally:
            for task in self.running.values():
                task.cancel()
            await asyncio.gather(*self.running.values(), return_exceptions=True)

    def _take_jobs(self) -> None:
        for job_id in [j for j, t in self.running.items() if t.done()]:
            del self.running[job_id]
        if len(self.running) >= self.max_jobs:
            return
        with self.db.session() as session:
            if not fine_tuning.others_waiting(session, self.owner):
                return
        with self.db.session() as session, session.begin():
            if fine_tuning.release_stopped(session, self.owner):
                log.warning("took over a fine-tuning job left running by a replica that stopped")
        while len(self.running) < self.max_jobs:
            job_id = fine_tuning.take(self.db.engine, self.owner, self.lease_s)
            if job_id is None:
                return
            self.running[job_id] = asyncio.create_task(self._run_job(job_id))

    def _prepare(self, job: FineTuningJob, folder: Path) -> None:
        """The worker's inputs: the config and the job's files, written once."""
        base = self.base_path(job.model, job.account_id)
        if base is None:
            raise ValueError(f"the model {job.model!r} cannot be fine-tuned on this server")
        folder.mkdir(parents=True, exist_ok=True)
        hp = json.loads(job.hyperparameters)
        cfg = FineTuneConfig(base=str(base), out_dir=str(folder), n_epochs=hp["n_epochs"],
                             batch_size=hp["batch_size"], learning_rate_multiplier=hp["learning_rate_multiplier"],
                             lora=job.method == "lora", max_len=fine_tuning.MAX_LEN, threads=self.threads)
        with self.db.session() as session:
            for file_id, name in ((job.training_file, TRAINING_FILE), (job.validation_file, VALIDATION_FILE)):
                if file_id and not (folder / name).exists():
                    data = files.file_content(session, self.blobs, job.account_id, file_id)
                    (folder / (name + ".tmp")).write_bytes(data)
                    (folder / (name + ".tmp")).replace(folder / name)
        (folder / JOB_FILE).write_text(json.dumps(asdict(cfg)))

    async def _run_job(self, job_id: str) -> None:
        folder = job_dir(self.data_dir, job_id)
        try:
            with self.db.session() as session:
                job = fine_tuning.held_by(session, job_id, self.owner)
                if job is None:
                    return
                session.expunge(job)
            self._prepare(job, folder)
            outcome = await self._train(job_id, folder)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the job cannot run here: it fails, unbilled
            log.exception("fine-tuning job %s failed", job_id)
            outcome = {"status": JobStatus.FAILED, "error": {"code": "invalid_job", "message": str(exc)}}
        if outcome is None:
            return  # cancelled: the API settled it
        engine = None
        if outcome["status"] is JobStatus.SUCCEEDED:
            # Loaded before the job ends, so that the model is served the moment it has succeeded.
            try:
                engine = await self.load(fine_tuning.model_name(job), outcome["model_path"])
            except Exception as exc:
                log.exception("the tuned model of job %s cannot be loaded", job_id)
                outcome = {"status": JobStatus.FAILED,
                           "error": {"code": "export_failed", "message": f"The tuned model cannot be served: {exc}"}}
        with self.db.session() as session, session.begin():
            ended = fine_tuning.end_job(session, job_id, self.owner, outcome["status"],
                                        model_path=outcome.get("model_path"), error=outcome.get("error"))
            if ended is not None:
                session.flush()
                session.expunge(ended)
        if engine is not None:
            if ended is not None:
                self.publish(ended, engine)
            else:
                await engine.close()  # type: ignore[attr-defined]

    async def _train(self, job_id: str, folder: Path) -> dict | None:
        """Run the worker to its end; the job's outcome, or None when it was cancelled."""
        stderr = (folder / "worker.log").open("ab")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "glmaas.jobs.finetune_worker", str(folder), "--exit-with-parent",
            stdout=asyncio.subprocess.PIPE, stderr=stderr, limit=1 << 20, env=_worker_env())
        renewer = asyncio.create_task(self._keep_lease(job_id, proc))
        model_path = None
        try:
            assert proc.stdout is not None
            async for line in proc.stdout:
                try:
                    event = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if event.get("type") == "done":
                    model_path = event["model_path"]
                else:
                    self._record(job_id, event)
            code = await proc.wait()
        finally:
            renewer.cancel()
            stderr.close()
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        with self.db.session() as session:
            if fine_tuning.held_by(session, job_id, self.owner) is None:
                return None
        if code == 0 and model_path:
            return {"status": JobStatus.SUCCEEDED, "model_path": model_path}
        tail = (folder / "worker.log").read_text(errors="replace")[-LOG_TAIL:].strip().splitlines()
        return {"status": JobStatus.FAILED,
                "error": {"code": "training_failed", "message": tail[-1] if tail else f"the worker exited {code}"}}

    async def _keep_lease(self, job_id: str, proc: asyncio.subprocess.Process) -> None:
        while True:
            await asyncio.sleep(min(POLL_S, self.lease_s / 3))
            try:
                if not fine_tuning.renew(self.db.engine, self.owner, job_id, self.lease_s):
                    proc.kill()  # cancelled (or taken over): stop training at once
                    return
            except Exception:
                log.exception("renewing the lease of fine-tuning job %s failed", job_id)

    def _record(self, job_id: str, event: dict) -> None:
        """A worker event into the store: the log line, the progress, the checkpoint."""
        kind, at = event.get("type"), event.get("at")
        with self.db.session() as session, session.begin():
            job = fine_tuning.held_by(session, job_id, self.owner)
            if job is None:
                return
            if kind == "metrics":
                job.trained_tokens = int(event["trained_tokens"])
                data = {k: event[k] for k in ("step", "total_steps", "epoch", "train_loss", "learning_rate",
                                              "trained_tokens", "tokens_per_s") if k in event}
                fine_tuning.add_event(session, job_id, f"Step {event['step']}/{event['total_steps']}: training "
                                      f"loss={event['train_loss']:.4f}, {event['tokens_per_s']:.0f} tokens/s",
                                      data=data, at=at)
            elif kind == "checkpoint":
                job.trained_tokens = int(event["trained_tokens"])
                metrics = {"step": event["step"], "train_loss": event["train_loss"],
                           "valid_loss": event["valid_loss"]}
                fine_tuning.add_checkpoint(session, job_id, event["step"], metrics)
                valid = "" if event["valid_loss"] is None else f", validation loss={event['valid_loss']:.4f}"
                fine_tuning.add_event(session, job_id, f"Checkpoint of epoch {event['epoch']} at step "
                                      f"{event['step']}: training loss={event['train_loss']:.4f}{valid}",
                                      data={**metrics, "epoch": event["epoch"]}, at=at)
            elif kind == "message":
                fine_tuning.add_event(session, job_id, str(event.get("message", "")), at=at)
