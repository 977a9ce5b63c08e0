"""Wire schemas of batches, in the order of OpenAI's docs (Zhipu's batch object is the same)."""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from glmaas.jobs.batches import RequestCounts
from glmaas.store.tables import Batch


class BatchCreateRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    input_file_id: str = Field(min_length=1, max_length=64)
    endpoint: str = Field(min_length=1, max_length=64)
    completion_window: str = Field(min_length=1, max_length=8)
    metadata: dict[str, str] | None = None


class BatchError(BaseModel):
    code: str
    message: str
    param: str | None = None
    line: int | None = None


class BatchErrors(BaseModel):
    object: Literal["list"] = "list"
    data: list[BatchError]


class BatchRequestCounts(BaseModel):
    total: int
    completed: int
    failed: int


def _when(t: float | None) -> int | None:
    return None if t is None else int(t)


class BatchObject(BaseModel):
    id: str
    object: Literal["batch"] = "batch"
    endpoint: str
    errors: BatchErrors | None
    input_file_id: str
    completion_window: str
    status: str
    output_file_id: str | None
    error_file_id: str | None
    created_at: int
    in_progress_at: int | None
    expires_at: int | None
    finalizing_at: int | None = None
    completed_at: int | None
    failed_at: int | None
    expired_at: int | None
    cancelling_at: int | None
    cancelled_at: int | None
    request_counts: BatchRequestCounts
    metadata: dict[str, Any] | None

    @classmethod
    def of(cls, batch: Batch, counts: RequestCounts) -> BatchObject:
        errors = BatchErrors(data=[BatchError(**e) for e in json.loads(batch.errors)]) if batch.errors else None
        return cls(
            id=batch.id, endpoint=batch.endpoint, errors=errors, input_file_id=batch.input_file_id,
            completion_window=batch.completion_window, status=batch.status,
            output_file_id=batch.output_file_id, error_file_id=batch.error_file_id,
            created_at=int(batch.created_at), in_progress_at=_when(batch.in_progress_at),
            expires_at=_when(batch.expires_at), completed_at=_when(batch.completed_at),
            failed_at=_when(batch.failed_at), cancelling_at=_when(batch.cancelling_at),
            cancelled_at=_when(batch.cancelled_at), expired_at=_when(batch.expired_at),
            request_counts=BatchRequestCounts(total=counts.total, completed=counts.completed, failed=counts.failed),
            metadata=json.loads(batch.metadata_json) if batch.metadata_json else None)


class BatchList(BaseModel):
    object: Literal["list"] = "list"
    data: list[BatchObject]
    has_more: bool
    first_id: str | None = None
    last_id: str | None = None
