"""Wire schemas of fine-tuning, in the order of OpenAI's docs (Zhipu's job object is a subset).

Extension: `method.supervised.lora` (default true) picks LoRA or full fine-tuning; OpenAI's
`method` has no such switch, and a supervised job without it is a LoRA job here.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from glmaas.jobs.fine_tuning import model_name
from glmaas.store.tables import FineTuningCheckpoint, FineTuningEvent, FineTuningJob

Auto = Literal["auto"]


class Hyperparameters(BaseModel):
    model_config = ConfigDict(extra="ignore")

    batch_size: int | Auto | None = None
    learning_rate_multiplier: float | Auto | None = None
    n_epochs: int | Auto | None = None


class Supervised(BaseModel):
    model_config = ConfigDict(extra="ignore")

    hyperparameters: Hyperparameters | None = None
    lora: bool = True  # extension: false trains every weight


class Method(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["supervised"] = "supervised"
    supervised: Supervised | None = None


class FineTuningJobCreate(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1, max_length=128)
    training_file: str = Field(min_length=1, max_length=64)
    hyperparameters: Hyperparameters | None = None
    suffix: str | None = Field(default=None, max_length=64)
    validation_file: str | None = Field(default=None, max_length=64)
    seed: int | None = None
    method: Method | None = None
    metadata: dict[str, str] | None = None
    request_id: str | None = Field(default=None, max_length=128)  # Zhipu's; the job id is ours


class JobError(BaseModel):
    code: str
    message: str
    param: str | None = None


class JobHyperparameters(BaseModel):
    batch_size: int
    learning_rate_multiplier: float
    n_epochs: int


class JobSupervised(BaseModel):
    hyperparameters: JobHyperparameters
    lora: bool


class JobMethod(BaseModel):
    type: Literal["supervised"] = "supervised"
    supervised: JobSupervised


class FineTuningJobObject(BaseModel):
    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    created_at: int
    error: JobError | None
    fine_tuned_model: str | None
    finished_at: int | None
    hyperparameters: JobHyperparameters
    model: str
    organization_id: str
    result_files: list[str] = []
    seed: int = 0
    status: str
    trained_tokens: int | None
    training_file: str
    validation_file: str | None
    estimated_finish: int | None = None
    integrations: list[Any] | None = None
    metadata: dict[str, str] | None = None
    method: JobMethod

    @classmethod
    def of(cls, job: FineTuningJob) -> FineTuningJobObject:
        hp = JobHyperparameters(**json.loads(job.hyperparameters))
        return cls(id=job.id, created_at=int(job.created_at), error=JobError(**json.loads(job.error)) if job.error
                   else None, fine_tuned_model=job.fine_tuned_model,
                   finished_at=None if job.finished_at is None else int(job.finished_at), hyperparameters=hp,
                   model=job.model, organization_id=job.account_id, status=job.status,
                   trained_tokens=job.trained_tokens, training_file=job.training_file,
                   validation_file=job.validation_file,
                   method=JobMethod(supervised=JobSupervised(hyperparameters=hp, lora=job.method == "lora")))


class FineTuningJobList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FineTuningJobObject]
    has_more: bool
    first_id: str | None = None
    last_id: str | None = None


class FineTuningJobEvent(BaseModel):
    id: str
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    created_at: int
    level: str
    message: str
    type: str
    data: dict[str, Any] | None = None

    @classmethod
    def of(cls, event: FineTuningEvent) -> FineTuningJobEvent:
        return cls(id=event.id, created_at=int(event.created_at), level=event.level, message=event.message,
                   type=event.type, data=json.loads(event.data) if event.data else None)


class FineTuningJobEventList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FineTuningJobEvent]
    has_more: bool
    first_id: str | None = None
    last_id: str | None = None


class CheckpointMetrics(BaseModel):
    step: float | None = None
    train_loss: float | None = None
    valid_loss: float | None = None


class FineTuningJobCheckpoint(BaseModel):
    id: str
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    metrics: CheckpointMetrics
    step_number: int

    @classmethod
    def of(cls, checkpoint: FineTuningCheckpoint, job: FineTuningJob) -> FineTuningJobCheckpoint:
        return cls(id=checkpoint.id, created_at=int(checkpoint.created_at),
                   fine_tuned_model_checkpoint=f"{model_name(job)}:ckpt-step-{checkpoint.step_number}",
                   fine_tuning_job_id=job.id, metrics=CheckpointMetrics(**json.loads(checkpoint.metrics)),
                   step_number=checkpoint.step_number)


class FineTuningJobCheckpointList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FineTuningJobCheckpoint]
    has_more: bool
    first_id: str | None = None
    last_id: str | None = None


class FineTunedModelDeleted(BaseModel):
    """Zhipu's `fine_tuning.models.delete` reply."""

    request_id: str
    model_name: str
    delete_status: Literal["deleted"] = "deleted"


class ModelDeleted(BaseModel):
    """OpenAI's `models.delete` reply."""

    id: str
    object: Literal["model"] = "model"
    deleted: bool = True
