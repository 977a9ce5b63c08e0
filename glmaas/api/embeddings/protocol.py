"""Wire schemas of the embeddings resource, in the order of the OpenAI reference; the Zhipu
dialect's request is the same body (plus `request_id`), and its response the same shape."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, field_validator

from glmaas.api.requests import EndUserId, RequestId

# OpenAI's documented limit on inputs per request.
MAX_INPUTS = 2048

TextOrTokens = str | list[str] | list[int] | list[list[int]]


class EmbeddingRequest(BaseModel):
    """`POST …/embeddings`. `null` means absent; unknown fields are ignored."""

    model_config = ConfigDict(extra="ignore")

    input: TextOrTokens
    model: str
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: int | None = None
    user: EndUserId | None = None
    # Zhipu: the caller's id for the request (it goes into the x-request-id header).
    request_id: RequestId | None = None
    # Extension: cut each input to the model's length instead of refusing it.
    truncate: bool | None = None

    @field_validator("input")
    @classmethod
    def _not_empty(cls, value: TextOrTokens) -> TextOrTokens:
        items = [value] if isinstance(value, str) else value
        if not items:
            raise ValueError("input must not be empty")
        if len(items) > MAX_INPUTS:
            raise ValueError(f"at most {MAX_INPUTS} inputs per request, got {len(items)}")
        if any(len(item) == 0 for item in items if not isinstance(item, int)):
            raise ValueError("an input must not be empty")
        return value

    def inputs(self) -> list[str] | list[list[int]]:
        """The inputs as a list: strings, or sequences of token ids."""
        if isinstance(self.input, str):
            return [self.input]
        if self.input and isinstance(self.input[0], int):
            return [self.input]  # type: ignore[list-item]
        return self.input  # type: ignore[return-value]


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    # A list of floats, or (encoding_format "base64") the little-endian float32 bytes in base64.
    embedding: list[float] | str


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    # Zhipu's SDK types it; an embedding generates nothing.
    completion_tokens: int = 0
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage
