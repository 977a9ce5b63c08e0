"""The engine interface: token ids in, deltas out.

An engine knows nothing about chat messages, dialects or money. It takes prompt token ids and
sampling parameters and yields `Delta`s: the new token ids with their decoded text. The last delta
carries the finish reason and the exact usage, counted by the engine's own tokenizer.

Cancellation is cooperative: the caller stops iterating and closes the generator
(`await gen.aclose()`, which `async for` + `break` or a cancelled task does); the engine must stop
work on that sequence within one decode step.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import ClassVar, Literal, Protocol, runtime_checkable

FinishReason = Literal["stop", "length", "abort", "error"]


@dataclass(frozen=True)
class OutputConstraint:
    """Output that must match a grammar: any JSON value (`json_object`), JSON valid against a
    JSON schema (`json_schema`, the schema as JSON text), or a grammar in the EBNF dialect of the
    engine's grammar library (`ebnf`)."""

    kind: Literal["json_object", "json_schema", "ebnf"]
    source: str = ""


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens. `temperature == 0` means greedy.

    Penalties follow OpenAI (`frequency_penalty`, `presence_penalty`: subtracted from the logits
    of tokens already generated) and Hugging Face (`repetition_penalty`: divides positive and
    multiplies negative logits of tokens seen in prompt or output; 1.0 is off). `logit_bias`
    adds to a token's logit before any other step. `logprobs`: None for none, else how many
    top alternatives (0–20) to report beside each chosen token."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    top_k: int = 0  # 0: off
    min_p: float = 0.0  # 0: off
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: Mapping[int, float] = field(default_factory=dict)
    logprobs: int | None = None
    constraint: OutputConstraint | None = None


@dataclass(frozen=True)
class GenerationRequest:
    request_id: str
    prompt_token_ids: tuple[int, ...]
    sampling: SamplingParams


@dataclass(frozen=True)
class Usage:
    """Token counts of one generation: exact from a local engine; from an upstream, its own
    count, or a count of ours flagged `estimated` when the upstream reported none."""

    prompt_tokens: int
    completion_tokens: int
    cached_prompt_tokens: int = 0
    estimated: bool = False
    reasoning_tokens: int = 0  # of the completion tokens, those spent reasoning (an upstream's report)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class TokenLogprob:
    """A generated token's log-probability and the most likely alternatives at its step."""

    token_id: int
    text: str
    logprob: float
    top: tuple[tuple[int, str, float], ...] = ()  # (token id, text, logprob), most likely first


@dataclass(frozen=True)
class Delta:
    """A step of output. `text` is the decoded piece; it may be empty while a multi-byte
    character is still incomplete, and is never split inside a character. `logprobs`, when the
    request asked for them, has one entry per id in `token_ids` but an end-of-generation token,
    which is counted in usage and never reported. `blank`: which blank of the prompt the tokens
    fill, for an engine that fills several in one generation (`BlankFilling`); 0 otherwise."""

    token_ids: tuple[int, ...] = ()
    text: str = ""
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
    logprobs: tuple[TokenLogprob, ...] | None = None
    blank: int = 0

    # Whether `token_count` is exact (engines that see token ids) or an estimate (upstreams).
    exact_count: ClassVar[bool] = True

    @property
    def token_count(self) -> int:
        """How many generated tokens this delta stands for."""
        return len(self.token_ids)


@dataclass(frozen=True)
class ModelInfo:
    """What the layers above need to know of a model to build its prompt."""

    model_id: str
    context_length: int
    chat_template: str | None
    bos_token: str = ""
    eos_token: str = ""
    owned_by: str = "glmaas"
    # The format its tool calls are written in (a key of `engines.tool_formats.TOOL_PARSERS`);
    # None: read from the chat template.
    tool_parser: str | None = None
    # Token ids of its prompts are below this; None: not known (an upstream's).
    vocab_size: int | None = None


@dataclass(frozen=True)
class EngineLoad:
    """What an engine is doing now, for the server's metrics: read at scrape time from the
    engine's own bookkeeping (never counted on the decode path), so a snapshot, not a lock-step
    view. `slots`, `kv_cells`, `kv_cells_used` and `threads` are None for an engine that has no such
    thing."""

    busy: int  # requests generating now
    waiting: int  # requests admitted by the engine and waiting for a slot
    slots: int | None = None  # requests it can generate at once
    kv_cells: int | None = None  # KV cache cells, all slots together
    kv_cells_used: int | None = None  # of those, holding a token (a freed slot keeps its prefix)
    threads: int | None = None  # CPU threads it computes with now (llama.cpp: may change per step)


class EngineError(Exception):
    """An engine fault: the request cannot go on. The message is safe to show a client.
    `retryable`: whether the same request sent again may succeed (the engine was restarting),
    rather than fail the same way."""

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


class EngineUnavailable(EngineError):
    """No part of the engine can take the request now (every upstream of a pool down or its
    circuit open), and nothing was produced: the same request may succeed in `retry_after_s`."""

    def __init__(self, message: str, *, retry_after_s: float = 1.0) -> None:
        super().__init__(message, retryable=True)
        self.retry_after_s = retry_after_s


class InvalidRequest(EngineError):
    """The request asks for what cannot be done as asked (a token id outside the vocabulary, a
    schema feature the grammar library lacks, a request an upstream refused with a 4xx): the
    caller's mistake, refused before generation."""


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


@runtime_checkable
class Infilling(Protocol):
    """An engine that may write the middle between a prefix and a suffix (fill-in-the-middle)."""

    def infill_prompt(self, prefix: list[int], suffix: list[int]) -> list[int] | None:
        """The prompt whose generation is the text between `prefix` and `suffix`, or None when
        the model has no way to infill (a GGUF without fill-in-the-middle tokens)."""
        ...


@runtime_checkable
class BlankFilling(Protocol):
    """An engine whose prompt may hold several blanks, all filled in one generation (GLM): its
    deltas say which blank they fill (`Delta.blank`), blanks in the order of the prompt."""

    def blank_positions(self, prompt: list[int]) -> list[int]:
        """Where the blanks of `prompt` are (indices into it); empty for a plain continuation."""
        ...

