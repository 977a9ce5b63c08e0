"""The engine interface: token ids in, deltas out.

An engine knows nothing about chat messages, dialects or money. It takes prompt token ids and
sampling parameters and yields `Delta`s: the new token ids with their decoded text. The last delta
carries the finish reason and the exact usage, counted by the engine's own tokenizer.

Cancellation is cooperative: the caller stops iterating and closes the generator
(`await gen.aclose()`, which `async for` + `break` or a cancelled task does); the engine must stop
work on that sequence within one decode step.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

FinishReason = Literal["stop", "length", "abort", "error"]


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens. `temperature == 0` means greedy."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class GenerationRequest:
    request_id: str
    prompt_token_ids: tuple[int, ...]
    sampling: SamplingParams


@dataclass(frozen=True)
class Usage:
    """Exact token counts of one generation."""

    prompt_tokens: int
    completion_tokens: int
    cached_prompt_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class Delta:
    """A step of output. `text` is the decoded piece; it may be empty while a multi-byte
    character is still incomplete, and is never split inside a character."""

    token_ids: tuple[int, ...] = ()
    text: str = ""
    finish_reason: FinishReason | None = None
    usage: Usage | None = None


@dataclass(frozen=True)
class ModelInfo:
    """What the layers above need to know of a model to build its prompt."""

    model_id: str
    context_length: int
    chat_template: str | None
    bos_token: str = ""
    eos_token: str = ""
    owned_by: str = "glmaas"


class EngineError(Exception):
    """An engine fault: the request cannot go on. The message is safe to show a client."""


class PromptTooLong(EngineError):
    """The prompt (plus at least one generated token) does not fit the context window."""


@runtime_checkable
class Engine(Protocol):
    """A loaded model that can generate."""

    info: ModelInfo

    def tokenize(self, text: str, *, special: bool = True) -> list[int]:
        """Token ids of `text`, parsing special tokens when `special` is true; no BOS is added."""
        ...

    def detokenize(self, token_ids: list[int]) -> str:
        """The text of `token_ids`."""
        ...

    def generate(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        """Stream the continuation of `request.prompt_token_ids`.

        Raises `PromptTooLong` before yielding anything when the prompt does not fit; the last
        delta has `finish_reason` and `usage` set.
        """
        ...

    async def close(self) -> None:
        """Free the model."""
        ...
