"""Serving a chat completion: the prompt it needs, the generation it asks for, and the two wire
forms of its result (one JSON body, or SSE chunks). Admission and settlement are the metered
run's (`api/metered.py`)."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any

from glmaas.api.chat.protocol import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatMessage,
    ChatRequest,
    Choice,
    ChoiceLogprobs,
    ChunkChoice,
    DeltaMessage,
    FunctionCallOut,
    ToolCallOut,
    UsageInfo,
)
from glmaas.api.dialects import Dialect
from glmaas.api.errors import ApiError, ErrorKind
from glmaas.api.metered import MeteredRun
from glmaas.api.sse import SSE_DONE, sse_event
from glmaas.api.state import AppState
from glmaas.engines.base import (
    Delta,
    Engine,
    EngineError,
    GenerationRequest,
    InvalidRequest,
    PromptTooLong,
    SamplingParams,
    TokenLogprob,
)
from glmaas.engines.chat import ChatCall, ChatDelta, ChatEngine, WholeToolCall
from glmaas.engines.constrained import ConstraintError, check
from glmaas.model.chat_template import ChatTemplateError, render_chat
from glmaas.platform.metered import GenerationTimeout
from glmaas.platform.metering import RequestStatus

log = logging.getLogger("glmaas.api")

# When the client sets no limit, a reply may run to the end of the context, capped here.
DEFAULT_MAX_TOKENS = 1024


@dataclass(frozen=True)
class Prompt:
    """A chat request made ready for its engine. A chat engine (an upstream) takes the messages
    themselves: it has no token ids, and `prompt_tokens` is our estimate until it reports usage."""

    engine: Engine | ChatEngine
    token_ids: tuple[int, ...]
    max_tokens: int
    prompt_tokens: int

    @property
    def asks_in_messages(self) -> bool:
        return isinstance(self.engine, ChatEngine)


def build_prompt(state: AppState, chat: ChatRequest) -> Prompt:
    """Render the messages with the model's chat template and tokenize them; raises `ApiError`
    when the model is unknown, the messages cannot be rendered or the prompt does not fit."""
    engine = state.registry.get(chat.model)
    if engine is None:
        raise ApiError(ErrorKind.MODEL_NOT_FOUND, f"The model {chat.model!r} does not exist.", param="model")
    info = engine.info
    if isinstance(engine, ChatEngine):
        estimate = engine.count_prompt(chat.messages, chat.tools)
        room = max(1, info.context_length - estimate)
        return Prompt(engine, (), min(chat.max_tokens or DEFAULT_MAX_TOKENS, room), estimate)
    try:
        text = render_chat(info.chat_template or "", chat.messages, bos_token=info.bos_token,
                           eos_token=info.eos_token, tools=chat.tools)
    except ChatTemplateError as exc:
        raise ApiError(ErrorKind.INVALID_REQUEST, f"Invalid messages: {exc}", param="messages") from None
    if chat.constraint is not None:
        try:  # refused before admission: nothing is held or billed for a schema we cannot enforce
            check(chat.constraint)
        except ConstraintError as exc:
            raise ApiError(ErrorKind.INVALID_REQUEST, f"Invalid response_format: {exc}.",
                           param="response_format") from None
    token_ids = tuple(engine.tokenize(text))
    room = info.context_length - len(token_ids)
    if room < 1:
        raise ApiError(
            ErrorKind.PROMPT_TOO_LONG,
            f"The prompt has {len(token_ids)} tokens; {chat.model} takes at most "
            f"{info.context_length - 1} prompt tokens.",
            param="messages",
        )
    return Prompt(engine, token_ids, min(chat.max_tokens or DEFAULT_MAX_TOKENS, room), len(token_ids))


def generate(chat: ChatRequest, prompt: Prompt, request_id: str, tenant: str) -> AsyncGenerator[Delta, None]:
    """Start the engine on the request: token ids for a local engine, the chat for a chat engine."""
    if isinstance(prompt.engine, ChatEngine):
        return prompt.engine.chat(call_of(chat, prompt, request_id, tenant))  # type: ignore[return-value]
    return prompt.engine.generate(generation_of(chat, prompt, request_id))  # type: ignore[return-value]


def generation_of(chat: ChatRequest, prompt: Prompt, request_id: str) -> GenerationRequest:
    sampling = SamplingParams(
        max_tokens=prompt.max_tokens, temperature=chat.temperature, top_p=chat.top_p, seed=chat.seed,
        stop=chat.stop, top_k=chat.top_k, min_p=chat.min_p, frequency_penalty=chat.frequency_penalty,
        presence_penalty=chat.presence_penalty, repetition_penalty=chat.repetition_penalty,
        logit_bias=chat.logit_bias, logprobs=chat.logprobs, constraint=chat.constraint)
    return GenerationRequest(request_id, prompt.token_ids, sampling)


def call_of(chat: ChatRequest, prompt: Prompt, request_id: str, tenant: str) -> ChatCall:
    """The request as a chat engine takes it: besides temperature and top_p, only the sampling
    fields the client set (off by default) travel."""
    optional = {"seed": chat.seed, "stop": list(chat.stop), "frequency_penalty": chat.frequency_penalty,
                "presence_penalty": chat.presence_penalty, "top_k": chat.top_k, "min_p": chat.min_p,
                "repetition_penalty": None if chat.repetition_penalty == 1.0 else chat.repetition_penalty,
                "logit_bias": {str(token): bias for token, bias in chat.logit_bias.items()}}
    sampling = {"temperature": chat.temperature, "top_p": chat.top_p,
                **{k: v for k, v in optional.items() if v not in (None, 0, [], {})}}
    return ChatCall(request_id, _wire_messages(chat.messages), prompt.max_tokens, sampling, tools=chat.tools,
                    tool_choice=chat.tool_choice, response_format=chat.response_format, logprobs=chat.logprobs,
                    thinking=chat.thinking, user=chat.user, tenant=tenant)


def _wire_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages as the OpenAI wire carries them: a tool call's arguments as JSON text (chat
    templates take them as objects)."""
    def call(c: dict[str, Any]) -> dict[str, Any]:
        function = c.get("function") or {}
        arguments = function.get("arguments", "{}")
        if isinstance(arguments, str):
            return c
        return {**c, "function": {**function, "arguments": json.dumps(arguments, ensure_ascii=False)}}

    return [{**m, "tool_calls": [call(c) for c in m["tool_calls"]]} if m.get("tool_calls") else m
            for m in messages]


async def first_delta_ahead(deltas: AsyncGenerator[Delta, None]) -> AsyncGenerator[Delta, None]:
    """Wait for the first delta before the response starts, so that an engine that refuses the
    request (an upstream's 4xx) or cannot start it (no upstream available) still answers with an
    HTTP error instead of a stream that fails at once."""
    try:
        first = await anext(deltas)
    except (EngineError, GenerationTimeout) as exc:
        raise _engine_error(exc) from None

    async def chained() -> AsyncGenerator[Delta, None]:
        try:
            yield first
            async for delta in deltas:
                yield delta
        finally:
            await deltas.aclose()

    return chained()


def _call_out(call: WholeToolCall, index: int | None = None) -> ToolCallOut:
    return ToolCallOut(index=index, id=call.id, function=FunctionCallOut(name=call.name, arguments=call.arguments))


def _engine_error(exc: EngineError | GenerationTimeout) -> ApiError:
    if isinstance(exc, InvalidRequest):
        return ApiError(ErrorKind.INVALID_REQUEST, f"The request cannot be served as asked: {exc}.")
    return ApiError(ErrorKind.ENGINE_ERROR, f"The model failed: {exc}")


async def complete(run: MeteredRun, deltas: AsyncIterator[Delta], chat: ChatRequest,
                   dialect: Dialect) -> ChatCompletion:
    """The whole reply as one response body."""
    pieces: list[str] = []
    reasoning: list[str] = []
    calls: list[WholeToolCall] = []
    logprobs: list[TokenLogprob] = []
    try:
        async for delta in deltas:
            pieces.append(delta.text)
            logprobs.extend(delta.logprobs or ())
            if isinstance(delta, ChatDelta):  # a chat engine's structure, passed through
                reasoning.append(delta.reasoning)
                calls.extend(delta.tool_calls)
    except PromptTooLong as exc:
        raise ApiError(ErrorKind.PROMPT_TOO_LONG, str(exc), param="messages") from None
    except (EngineError, GenerationTimeout) as exc:
        raise _engine_error(exc) from None
    return ChatCompletion(
        id=dialect.completion_id(run.request_id),
        request_id=run.request_id,
        created=run.created,
        model=chat.model,
        choices=[Choice(finish_reason=run.finish_reason,
                        logprobs=ChoiceLogprobs.of(logprobs) if chat.logprobs is not None else None,
                        message=ChatMessage(content="".join(pieces) if pieces or not calls else None,
                                            reasoning_content="".join(reasoning) or None,
                                            tool_calls=[_call_out(c) for c in calls] or None))],
        usage=UsageInfo.of(run),
    )


async def stream(run: MeteredRun, deltas: AsyncGenerator[Delta, None], chat: ChatRequest,
                 dialect: Dialect) -> AsyncIterator[bytes]:
    """The reply as SSE events, ending with the finish chunk (with usage when the dialect or the
    client wants it) and [DONE]."""
    chunk_id = dialect.completion_id(run.request_id)
    include_usage = dialect.always_usage or chat.include_usage

    def chunk(delta: DeltaMessage, finish: str | None = None, usage: UsageInfo | None = None,
              logprobs: ChoiceLogprobs | None = None) -> bytes:
        return sse_event(ChatCompletionChunk(
            id=chunk_id, request_id=run.request_id, created=run.created, model=chat.model,
            choices=[ChunkChoice(delta=delta, logprobs=logprobs, finish_reason=finish)], usage=usage))

    def finish_chunk(reason: str) -> bytes:
        return chunk(DeltaMessage(), reason, UsageInfo.of(run))

    calls = 0
    yield chunk(DeltaMessage(role="assistant", content=""))
    try:
        async for delta in deltas:
            if isinstance(delta, ChatDelta) and delta.reasoning:
                yield chunk(DeltaMessage(reasoning_content=delta.reasoning))
            # A token's logprobs go out with it even while a possible stop string holds its text.
            if delta.text or delta.logprobs:
                yield chunk(DeltaMessage(content=delta.text),
                            logprobs=ChoiceLogprobs.of(delta.logprobs) if delta.logprobs else None)
            for call in delta.tool_calls if isinstance(delta, ChatDelta) else ():
                yield chunk(DeltaMessage(tool_calls=[_call_out(call, calls)]))
                calls += 1
    except (EngineError, GenerationTimeout) as exc:
        # Headers are gone: the fault is told in-band, as the dialect does it.
        yield dialect.stream_fault(_engine_error(exc), finish_chunk)
        yield SSE_DONE
        return
    except Exception:
        # The server itself failed mid-stream (a bug, the database): logged once here, with its
        # traceback, and told in-band like an engine fault; billed as produced, status `error`
        # (settled before the deltas are closed below, which would record it as aborted).
        log.exception("request %s: the stream failed", run.request_id)
        run.settle_if_open(RequestStatus.ERROR)
        fault = ApiError(ErrorKind.INTERNAL, f"The server failed on this request (request id "
                                             f"{run.request_id}); the error has been logged.")
        yield dialect.stream_fault(fault, finish_chunk)
        yield SSE_DONE
        return
    finally:
        # However this generator ends, the engine stops within a step.
        await deltas.aclose()
    yield chunk(DeltaMessage(), run.finish_reason, UsageInfo.of(run) if include_usage else None)
    yield SSE_DONE
