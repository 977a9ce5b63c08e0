"""Wire schemas of a chat completion: the request, the canonical request it maps to, and the
response body and stream chunks.

Fields are in the order of the public docs. Both dialects share one schema: `null` means absent,
unknown fields are ignored, and what we cannot honour (n > 1, image parts) is a clear 400. Every
number is bounded and every id a client chooses restricted (`api/requests.py`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationInfo,
    field_validator,
    model_serializer,
)

from glmaas.api.requests import EndUserId, RequestId
from glmaas.engines.base import OutputConstraint, TokenLogprob
from glmaas.engines.constrained import json_schema_constraint
from glmaas.platform.metered import MeteredRun

MAX_STOP_STRINGS = 4
MAX_TOP_LOGPROBS = 20
MAX_LOGIT_BIAS = 300  # entries, as OpenAI allows
# Numbers are bounded where they enter: a token count fits the ledger's 32-bit columns, and a
# seed the samplers' unsigned 64 bits (a negative or longer one is refused, not wrapped).
MAX_TOKENS = 2**31 - 1
MAX_SEED = 2**64 - 1


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ContentPart(_Lenient):
    type: str
    text: str | None = None


class Message(_Lenient):
    role: Literal["system", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None

    @field_validator("content")
    @classmethod
    def _text_parts_only(cls, value: str | list[ContentPart] | None) -> str | list[ContentPart] | None:
        if isinstance(value, list):
            for part in value:
                if part.type != "text" or part.text is None:
                    raise ValueError(f"content parts of type {part.type!r} are not supported; use text parts")
        return value

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text or "" for p in self.content)
        return self.content or ""


class StreamOptions(_Lenient):
    include_usage: bool | None = None


class JsonSchemaFormat(_Lenient):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    name: str = Field(default="response", max_length=64)
    description: str | None = None
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Lenient):
    """`{type: text}`, `{type: json_object}` or `{type: json_schema, json_schema: {...}}`."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    def constraint(self) -> OutputConstraint | None:
        if self.type == "json_object":
            return OutputConstraint("json_object")
        if self.type == "json_schema":
            if self.json_schema is None:
                raise ValueError("response_format of type json_schema needs json_schema")
            return json_schema_constraint(self.json_schema.schema_)
        return None


class ChatCompletionRequest(_Lenient):
    model: str = Field(min_length=1, max_length=128)
    messages: list[Message] = Field(min_length=1)
    request_id: RequestId | None = None
    user_id: EndUserId | None = None
    user: EndUserId | None = None
    do_sample: bool | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS)
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    stop: str | list[str] | None = None
    n: int | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    response_format: ResponseFormat | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    # Sampling beyond OpenAI's own fields (vLLM's extensions): top_k, min_p, repetition_penalty.
    top_k: int | None = Field(default=None, ge=0)
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    repetition_penalty: float | None = Field(default=None, gt=0.0, le=2.0)
    logit_bias: dict[str, float] | None = None

    @field_validator("logit_bias")
    @classmethod
    def _token_biases(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        if value is None:
            return value
        if len(value) > MAX_LOGIT_BIAS:
            raise ValueError(f"at most {MAX_LOGIT_BIAS} entries")
        for key, bias in value.items():
            if not key.isdigit():
                raise ValueError(f"keys are token ids as strings; got {key!r}")
            if not -100.0 <= bias <= 100.0:
                raise ValueError(f"biases are between -100 and 100; got {bias} for token {key}")
        return value

    @field_validator("top_logprobs")
    @classmethod
    def _with_logprobs(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None and not info.data.get("logprobs"):
            raise ValueError("top_logprobs needs logprobs: true")
        return value

    @field_validator("response_format")
    @classmethod
    def _format_complete(cls, value: ResponseFormat | None) -> ResponseFormat | None:
        if value is not None:
            value.constraint()  # a json_schema format without its json_schema is refused here
        return value

    @field_validator("n")
    @classmethod
    def _only_one_choice(cls, value: int | None) -> int | None:
        if value is not None and value != 1:
            raise ValueError("only n=1 is supported")
        return value

    @field_validator("stop")
    @classmethod
    def _few_stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > MAX_STOP_STRINGS:
            raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings")
        return value


@dataclass(frozen=True)
class ChatRequest:
    """The canonical chat request, dialect-free."""

    model: str
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None
    max_tokens: int | None
    temperature: float
    top_p: float
    seed: int | None
    stop: tuple[str, ...]
    stream: bool
    include_usage: bool  # the client asked for usage in the stream (a dialect may send it anyway)
    request_id: str | None
    user: str | None
    constraint: OutputConstraint | None = None  # from response_format
    logprobs: int | None = None  # None: no logprobs; else how many alternatives per token
    top_k: int = 0
    min_p: float = 0.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: dict[int, float] = field(default_factory=dict)


def to_canonical(body: ChatCompletionRequest) -> ChatRequest:
    """Map a parsed request onto the canonical one. `do_sample: false` means greedy."""
    greedy = body.do_sample is False
    stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
    messages = []
    for m in body.messages:
        msg: dict[str, Any] = {"role": m.role, "content": m.text()}
        if m.name is not None:
            msg["name"] = m.name
        if m.tool_calls:
            msg["tool_calls"] = m.tool_calls
        if m.tool_call_id is not None:
            msg["tool_call_id"] = m.tool_call_id
        messages.append(msg)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    return ChatRequest(
        model=body.model,
        messages=messages,
        tools=body.tools,
        max_tokens=body.max_completion_tokens or body.max_tokens,
        temperature=0.0 if greedy else (1.0 if body.temperature is None else body.temperature),
        top_p=1.0 if greedy or body.top_p is None else body.top_p,
        seed=body.seed,
        stop=stop,
        stream=bool(body.stream),
        include_usage=include_usage,
        request_id=body.request_id,
        user=body.user_id or body.user,
        constraint=body.response_format.constraint() if body.response_format else None,
        logprobs=(body.top_logprobs or 0) if body.logprobs else None,
        top_k=body.top_k or 0,
        min_p=body.min_p or 0.0,
        frequency_penalty=body.frequency_penalty or 0.0,
        presence_penalty=body.presence_penalty or 0.0,
        repetition_penalty=body.repetition_penalty or 1.0,
        logit_bias={int(k): v for k, v in (body.logit_bias or {}).items()},
    )


# Responses, in the order of the public docs.


class PromptTokensDetails(BaseModel):
    cached_tokens: int


class UsageInfo(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails

    @classmethod
    def of(cls, run: MeteredRun) -> UsageInfo:
        """What the client is told: the same counts the run settles."""
        return cls(prompt_tokens=run.prompt_tokens, completion_tokens=run.completion_tokens,
                   total_tokens=run.prompt_tokens + run.completion_tokens,
                   prompt_tokens_details=PromptTokensDetails(cached_tokens=run.cached_tokens))


class ChatMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprobInfo(TopLogprob):
    top_logprobs: list[TopLogprob]

    @classmethod
    def of(cls, entry: TokenLogprob) -> TokenLogprobInfo:
        return cls(token=entry.text, logprob=entry.logprob, bytes=list(entry.text.encode()),
                   top_logprobs=[TopLogprob(token=text, logprob=lp, bytes=list(text.encode()))
                                 for _, text, lp in entry.top])


class ChoiceLogprobs(BaseModel):
    """OpenAI's `choices[].logprobs`: one entry per generated token (the end token excepted)."""

    content: list[TokenLogprobInfo]
    refusal: list[TokenLogprobInfo] | None = None

    @classmethod
    def of(cls, entries: tuple[TokenLogprob, ...] | list[TokenLogprob]) -> ChoiceLogprobs:
        return cls(content=[TokenLogprobInfo.of(e) for e in entries])


class Choice(BaseModel):
    index: int = 0
    finish_reason: str | None
    message: ChatMessage
    logprobs: ChoiceLogprobs | None = None


class ChatCompletion(BaseModel):
    id: str
    request_id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: UsageInfo


class DeltaMessage(BaseModel):
    """What a chunk adds; absent fields are left out of the wire form, not sent as null."""

    role: Literal["assistant"] | None = None
    content: str | None = None

    @model_serializer(mode="wrap")
    def _without_absent(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if v is not None}


class ChunkChoice(BaseModel):
    index: int = 0
    delta: DeltaMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    request_id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    # Only on the last chunk, and only when the dialect or the client asks for it.
    usage: UsageInfo | None = None

    @model_serializer(mode="wrap")
    def _usage_when_given(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        body = handler(self)
        if body["usage"] is None:
            del body["usage"]
        return body
