"""Wire schemas of OpenAI's legacy completions (`POST /v1/completions`): the request, the canonical
request it maps to, the response body and its stream chunks, in the order of the OpenAI reference.

`null` means absent and unknown fields are ignored. The prompt is a string, token ids, or a list of
up to `MAX_PROMPTS` of either (a choice each); one choice per prompt (`n`, `best_of` = 1): anything
else is a 400 that names the field. Extension: `fills`, on a choice whose prompt held
`[MASK]` blanks, lists what the model wrote into each (docs: README, "Completions").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, field_validator, model_serializer

from glmaas.api.chat.protocol import MAX_SEED, MAX_TOKENS, UsageInfo, checked_logit_bias, checked_stops
from glmaas.api.requests import EndUserId, RequestId
from glmaas.engines.base import TokenLogprob

# OpenAI's own default for a completion without max_tokens.
DEFAULT_MAX_TOKENS = 16
MAX_LOGPROBS = 20  # alternatives per token (OpenAI allows 5)
MAX_PROMPTS = 16

PromptIn = str | list[str] | list[int] | list[list[int]]


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool | None = None


class CompletionRequest(BaseModel):
    """`POST /v1/completions`."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1, max_length=128)
    prompt: PromptIn
    best_of: int | None = None
    echo: bool | None = None
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None
    logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS)
    n: int | None = None
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    stop: str | list[str] | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    suffix: str | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    user: EndUserId | None = None
    # glmaas: the caller's id for the request (it goes into the x-request-id header).
    request_id: RequestId | None = None

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompt_shape(cls, value: Any) -> Any:
        def tokens(v: Any) -> bool:
            return isinstance(v, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in v)

        if isinstance(value, str) or tokens(value):
            return value
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
        if isinstance(value, list) and all(tokens(v) for v in value):
            return value
        raise ValueError("a prompt is a string, a list of strings, a list of token ids or a list of such lists")

    @field_validator("prompt")
    @classmethod
    def _some_prompts(cls, value: PromptIn) -> PromptIn:
        prompts = prompts_of(value)
        if not prompts:
            raise ValueError("the prompt must not be empty")
        if len(prompts) > MAX_PROMPTS:
            raise ValueError(f"at most {MAX_PROMPTS} prompts per request, got {len(prompts)}")
        for prompt in prompts:
            if not prompt:
                raise ValueError("a prompt must not be empty")
            if isinstance(prompt, list) and min(prompt) < 0:
                raise ValueError("token ids are not negative")
        return value

    @field_validator("n", "best_of")
    @classmethod
    def _only_one_choice(cls, value: int | None) -> int | None:
        if value is not None and value != 1:
            raise ValueError("only 1 is supported")
        return value

    @field_validator("stop")
    @classmethod
    def _few_stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        return checked_stops(value)

    @field_validator("logit_bias")
    @classmethod
    def _token_biases(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        return checked_logit_bias(value)


def prompts_of(value: PromptIn) -> list:
    """The prompts of a `prompt` field: one string or token-id list, or a list of them."""
    if isinstance(value, str) or (value and isinstance(value[0], int)):
        return [value]
    return list(value)


Prompt = str | tuple[int, ...]


@dataclass(frozen=True)
class TextCompletionRequest:
    """The canonical completion request: its prompts (a choice each), as text or as token ids."""

    model: str
    prompts: tuple[Prompt, ...]
    suffix: str | None
    max_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    stop: tuple[str, ...]
    stream: bool
    include_usage: bool
    echo: bool
    logprobs: int | None
    frequency_penalty: float
    presence_penalty: float
    logit_bias: dict[int, float] = field(default_factory=dict)
    request_id: str | None = None
    user: str | None = None


def to_canonical(body: CompletionRequest) -> TextCompletionRequest:
    return TextCompletionRequest(
        model=body.model,
        prompts=tuple(p if isinstance(p, str) else tuple(p) for p in prompts_of(body.prompt)),
        suffix=body.suffix,
        max_tokens=body.max_tokens or DEFAULT_MAX_TOKENS,
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        seed=body.seed,
        stop=(body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ()),
        stream=bool(body.stream),
        include_usage=bool(body.stream_options and body.stream_options.include_usage),
        echo=bool(body.echo),
        logprobs=body.logprobs,
        frequency_penalty=body.frequency_penalty or 0.0,
        presence_penalty=body.presence_penalty or 0.0,
        logit_bias={int(k): v for k, v in (body.logit_bias or {}).items()},
        request_id=body.request_id,
        user=body.user,
    )


# Responses.


class CompletionLogprobs(BaseModel):
    """OpenAI's legacy logprobs: parallel lists, one entry per generated token (the end token of
    a generation or of a blank excepted); `text_offset` is each token's place in `text`."""

    tokens: list[str] = Field(default_factory=list)
    token_logprobs: list[float] = Field(default_factory=list)
    top_logprobs: list[dict[str, float]] = Field(default_factory=list)
    text_offset: list[int] = Field(default_factory=list)

    def add(self, entries: tuple[TokenLogprob, ...], offset: int) -> None:
        for entry in entries:
            self.tokens.append(entry.text)
            self.token_logprobs.append(entry.logprob)
            self.top_logprobs.append({text: lp for _, text, lp in entry.top})
            self.text_offset.append(offset)
            offset += len(entry.text)


class CompletionChoice(BaseModel):
    text: str
    index: int = 0
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None
    # Extension: the fill of each [MASK] blank of the prompt, in order (only when it had blanks).
    fills: list[str] | None = None

    @model_serializer(mode="wrap")
    def _fills_when_given(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        body = handler(self)
        if body.get("fills") is None:
            body.pop("fills", None)
        return body


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: UsageInfo | None = None

    @model_serializer(mode="wrap")
    def _usage_when_given(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        body = handler(self)
        if body.get("usage") is None:
            body.pop("usage", None)
        return body
