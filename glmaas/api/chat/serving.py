"""Serving a chat completion: the prompt it needs, the generation it asks for, and the two wire
forms of its result (one JSON body, or SSE chunks). Admission and settlement are the metered
run's (`api/metered.py`)."""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass

from glmaas.api.chat.protocol import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatMessage,
    ChatRequest,
    Choice,
    ChoiceLogprobs,
    ChunkChoice,
    DeltaMessage,
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
from glmaas.engines.constrained import ConstraintError, check
from glmaas.model.chat_template import ChatTemplateError, render_chat
from glmaas.platform.metered import GenerationTimeout
from glmaas.platform.metering import RequestStatus

log = logging.getLogger("glmaas.api")

# When the client sets no limit, a reply may run to the end of the context, capped here.
DEFAULT_MAX_TOKENS = 1024


@dataclass(frozen=True)
class Prompt:
    """A chat request made ready for its engine."""

    engine: Engine
    token_ids: tuple[int, ...]
    max_tokens: int


def build_prompt(state: AppState, chat: ChatRequest) -> Prompt:
    """Render the messages with the model's chat template and tokenize them; raises `ApiError`
    when the model is unknown, the messages cannot be rendered or the prompt does not fit."""
    engine = state.registry.get(chat.model)
    if engine is None:
        raise ApiError(ErrorKind.MODEL_NOT_FOUND, f"The model {chat.model!r} does not exist.", param="model")
    info = engine.info
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
    return Prompt(engine, token_ids, min(chat.max_tokens or DEFAULT_MAX_TOKENS, room))


def generation_of(chat: ChatRequest, prompt: Prompt, request_id: str) -> GenerationRequest:
    sampling = SamplingParams(
        max_tokens=prompt.max_tokens, temperature=chat.temperature, top_p=chat.top_p, seed=chat.seed,
        stop=chat.stop, top_k=chat.top_k, min_p=chat.min_p, frequency_penalty=chat.frequency_penalty,
        presence_penalty=chat.presence_penalty, repetition_penalty=chat.repetition_penalty,
        logit_bias=chat.logit_bias, logprobs=chat.logprobs, constraint=chat.constraint)
    return GenerationRequest(request_id, prompt.token_ids, sampling)


def _engine_error(exc: EngineError | GenerationTimeout) -> ApiError:
    if isinstance(exc, InvalidRequest):
        return ApiError(ErrorKind.INVALID_REQUEST, f"The request cannot be served as asked: {exc}.")
    return ApiError(ErrorKind.ENGINE_ERROR, f"The model failed: {exc}")


async def complete(run: MeteredRun, deltas: AsyncIterator[Delta], chat: ChatRequest,
                   dialect: Dialect) -> ChatCompletion:
    """The whole reply as one response body."""
    pieces: list[str] = []
    logprobs: list[TokenLogprob] = []
    try:
        async for delta in deltas:
            pieces.append(delta.text)
            logprobs.extend(delta.logprobs or ())
    except PromptTooLong as exc:
        raise ApiError(ErrorKind.PROMPT_TOO_LONG, str(exc), param="messages") from None
    except (EngineError, GenerationTimeout) as exc:
        raise _engine_error(exc) from None
    return ChatCompletion(
        id=dialect.completion_id(run.request_id),
        request_id=run.request_id,
        created=run.created,
        model=chat.model,
        choices=[Choice(finish_reason=run.finish_reason, message=ChatMessage(content="".join(pieces)),
                        logprobs=ChoiceLogprobs.of(logprobs) if chat.logprobs is not None else None)],
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

    yield chunk(DeltaMessage(role="assistant", content=""))
    try:
        async for delta in deltas:
            # A token's logprobs go out with it even while a possible stop string holds its text.
            if delta.text or delta.logprobs:
                yield chunk(DeltaMessage(content=delta.text),
                            logprobs=ChoiceLogprobs.of(delta.logprobs) if delta.logprobs else None)
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
