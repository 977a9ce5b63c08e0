"""Serving a chat completion: the prompt it needs, the generation it asks for, and the two wire
forms of its result (one JSON body, or SSE chunks). Admission and settlement are the metered
run's (`api/metered.py`)."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
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
from glmaas.api.chat.tools import (
    output_parser,
    prompt_tools,
    template_switches,
    tool_call_constraint,
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
    EngineUnavailable,
    GenerationRequest,
    InvalidRequest,
    OutputConstraint,
    PromptTooLong,
    SamplingParams,
    TokenLogprob,
)
from glmaas.engines.chat import ChatCall, ChatDelta, ChatEngine, asks_in_messages
from glmaas.engines.chat_output import ChatOutputParser, ChatPiece
from glmaas.engines.constrained import ConstraintError, check
from glmaas.engines.tool_calls import ToolCall
from glmaas.model.chat_template import ChatTemplateError, render_chat
from glmaas.platform.metered import GenerationTimeout, ShutdownCut
from glmaas.platform.metering import RequestStatus

log = logging.getLogger("glmaas.api")

# When the client sets no limit, a reply may run to the end of the context, capped here.
DEFAULT_MAX_TOKENS = 1024


@dataclass(frozen=True)
class Prompt:
    """A chat request made ready for its engine. A chat engine (an upstream) takes the messages
    themselves: it has no token ids, and `prompt_tokens` is our estimate until it reports usage."""

    engine: Engine | ChatEngine
    text: str  # the rendered prompt; empty for a chat engine
    token_ids: tuple[int, ...]
    max_tokens: int
    prompt_tokens: int
    # The grammar the reply must follow (`output_constraint`), checked before admission.
    constraint: OutputConstraint | None = None

    @property
    def asks_in_messages(self) -> bool:
        return asks_in_messages(self.engine)


def render_prompt(state: AppState, chat: ChatRequest, account_id: str) -> tuple[Engine, str, tuple[int, ...]]:
    """The engine of the request's model, and the prompt's text and token ids; raises
    `ApiError` when the model is unknown (to `account_id`) or the messages cannot be rendered."""
    engine = state.registry.get(chat.model, account_id)
    if engine is None:
        raise ApiError(ErrorKind.MODEL_NOT_FOUND, f"The model {chat.model!r} does not exist.", param="model")
    info = engine.info
    if asks_in_messages(engine):
        raise ApiError(ErrorKind.INVALID_REQUEST, f"The model {chat.model!r} is served by an upstream, which "
                       "renders and tokenizes its own prompts.", param="model")
    if info.chat_template is None:  # a GLM pretrained by blank infilling, a GGUF without one
        raise ApiError(ErrorKind.INVALID_REQUEST, f"The model {chat.model!r} has no chat template; send it "
                       "a prompt through /v1/completions.", param="model")
    try:
        text = render_chat(info.chat_template or "", chat.messages, bos_token=info.bos_token,
                           eos_token=info.eos_token, tools=prompt_tools(chat),
                           switches=template_switches(info, chat))
    except ChatTemplateError as exc:
        raise ApiError(ErrorKind.INVALID_REQUEST, f"Invalid messages: {exc}", param="messages") from None
    return engine, text, tuple(engine.tokenize(text))


def build_prompt(state: AppState, chat: ChatRequest, account_id: str) -> Prompt:
    """The rendered, tokenized prompt; raises `ApiError` as `render_prompt` does, when the
    output constraint cannot be enforced, and when the prompt does not fit. A chat engine (an
    upstream) takes the messages as they are: its prompt is our estimate of their tokens."""
    engine = state.registry.get(chat.model, account_id)
    if asks_in_messages(engine):
        estimate = engine.count_prompt(chat.messages, chat.tools)
        room = max(1, engine.info.context_length - estimate)
        return Prompt(engine, "", (), min(chat.max_tokens or DEFAULT_MAX_TOKENS, room), estimate)
    engine, text, token_ids = render_prompt(state, chat, account_id)
    constraint, param = output_constraint(chat)
    if constraint is not None:
        try:  # refused before admission: nothing is held or billed for a schema we cannot enforce
            check(constraint)
        except ConstraintError as exc:
            raise ApiError(ErrorKind.INVALID_REQUEST, f"Invalid {param}: {exc}.", param=param) from None
    room = engine.info.context_length - len(token_ids)
    if room < 1:
        raise ApiError(
            ErrorKind.PROMPT_TOO_LONG,
            f"The prompt has {len(token_ids)} tokens; {chat.model} takes at most "
            f"{engine.info.context_length - 1} prompt tokens.",
            param="messages",
        )
    return Prompt(engine, text, token_ids, min(chat.max_tokens or DEFAULT_MAX_TOKENS, room), len(token_ids),
                  constraint)


def generate(chat: ChatRequest, prompt: Prompt, request_id: str, tenant: str) -> AsyncGenerator[Delta, None]:
    """Start the engine on the request: token ids for a local engine, the chat for a chat engine."""
    if prompt.asks_in_messages:
        return prompt.engine.chat(call_of(chat, prompt, request_id, tenant))  # type: ignore[return-value]
    return prompt.engine.generate(generation_of(chat, prompt, request_id))  # type: ignore[return-value]


def generation_of(chat: ChatRequest, prompt: Prompt, request_id: str) -> GenerationRequest:
    sampling = SamplingParams(
        max_tokens=prompt.max_tokens, temperature=chat.temperature, top_p=chat.top_p, seed=chat.seed,
        stop=chat.stop, top_k=chat.top_k, min_p=chat.min_p, frequency_penalty=chat.frequency_penalty,
        presence_penalty=chat.presence_penalty, repetition_penalty=chat.repetition_penalty,
        logit_bias=chat.logit_bias, logprobs=chat.logprobs, constraint=prompt.constraint)
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
    tool_choice: Any = None
    if chat.tools:
        tool_choice = ({"type": "function", "function": {"name": chat.named_tool}} if chat.tool_choice == "named"
                       else chat.tool_choice)
    return ChatCall(request_id, _wire_messages(chat.messages), prompt.max_tokens, sampling, tools=chat.tools,
                    tool_choice=tool_choice, response_format=chat.response_format, logprobs=chat.logprobs,
                    thinking=chat.thinking, user=chat.user, tenant=tenant, stream=chat.stream)


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
        raise engine_error(exc) from None

    async def chained() -> AsyncGenerator[Delta, None]:
        try:
            yield first
            async for delta in deltas:
                yield delta
        finally:
            await deltas.aclose()

    return chained()


def parser_of(chat: ChatRequest, prompt: Prompt) -> ChatOutputParser:
    """What reads the reply's reasoning and tool calls out of its text (a chat engine's deltas
    carry them already: its parser passes text through)."""
    if prompt.asks_in_messages:
        return ChatOutputParser()
    return output_parser(prompt.engine.info, chat, prompt.text)


def piece_of(delta: Delta, parser: ChatOutputParser) -> ChatPiece:
    """What a delta adds to the reply: parsed out of a local engine's text, or as a chat engine
    structured it."""
    if isinstance(delta, ChatDelta):
        if delta.usage is not None:
            parser.report_reasoning_tokens(delta.usage.reasoning_tokens)
        return ChatPiece(reasoning=delta.reasoning, content=delta.text, tool_calls=list(delta.tool_calls))
    return parser.push(delta.text, len(delta.token_ids))


def engine_error(exc: EngineError | GenerationTimeout) -> ApiError:
    if isinstance(exc, PromptTooLong):  # the engine's own count of what the prompt needs
        return ApiError(ErrorKind.PROMPT_TOO_LONG, f"The prompt does not fit: {exc}.")
    if isinstance(exc, InvalidRequest):
        return ApiError(ErrorKind.INVALID_REQUEST, f"The request cannot be served as asked: {exc}.")
    if isinstance(exc, EngineUnavailable):  # nothing was produced; the breakers reopen after their cooldown
        return ApiError(ErrorKind.MODEL_UNAVAILABLE, f"The model is unavailable: {exc}; send the request again later.",
                        headers={"retry-after": str(max(1, math.ceil(exc.retry_after_s)))})
    # Tell clients whether sending it again can help, so that retrying wrappers do not multiply
    # one deterministic failure (a timeout would time out again).
    retry = (isinstance(exc, EngineError) and exc.retryable) or isinstance(exc, ShutdownCut)
    return ApiError(ErrorKind.ENGINE_ERROR, f"The model failed: {exc}",
                    headers={"x-should-retry": "true" if retry else "false"})


async def stream_fault_events(run: MeteredRun, exc: Exception, dialect: Dialect,
                              fault_chunk: Callable[[str], bytes]) -> tuple[bytes, ...]:
    """The events that end a stream whose generation failed after its headers went out: the
    fault told in-band, as the dialect does it. Called from the `except` that caught `exc`. An
    engine fault or timeout is the engine's; anything else is the server itself failing mid-stream
    (a bug, the database): logged once here, with its traceback, and billed as produced with
    status `error` (settled now, before the stream's deltas are closed, which would record it as
    aborted)."""
    if isinstance(exc, EngineError | GenerationTimeout):
        return dialect.stream_fault(engine_error(exc), fault_chunk), SSE_DONE
    log.exception("request %s: the stream failed", run.request_id)
    await run.settle_if_open(RequestStatus.ERROR)
    fault = ApiError(ErrorKind.INTERNAL, f"The server failed on this request (request id "
                                         f"{run.request_id}); the error has been logged.")
    return dialect.stream_fault(fault, fault_chunk), SSE_DONE


def output_constraint(chat: ChatRequest) -> tuple[OutputConstraint | None, str]:
    """The grammar the reply must follow (a required or named tool call's, or the response
    format's; the request schema refuses both at once) and the field that set it."""
    forced = tool_call_constraint(chat)
    if forced is not None:
        return forced, "tools"
    return chat.constraint, "response_format"


def _finish_reason(run: MeteredRun, calls: int) -> str | None:
    return "tool_calls" if calls and run.finish_reason == "stop" else run.finish_reason


def _tool_call_out(call: ToolCall, index: int | None = None) -> ToolCallOut:
    return ToolCallOut(index=index, id=call.id, type="function",
                       function=FunctionCallOut(name=call.name, arguments=call.arguments))


async def complete(run: MeteredRun, deltas: AsyncIterator[Delta], chat: ChatRequest,
                   parser: ChatOutputParser, dialect: Dialect) -> ChatCompletion:
    """The whole reply as one response body."""
    reply = ChatPiece()
    logprobs: list[TokenLogprob] = []
    try:
        async for delta in deltas:
            reply.extend(piece_of(delta, parser))
            logprobs.extend(delta.logprobs or ())
    except PromptTooLong as exc:
        raise ApiError(ErrorKind.PROMPT_TOO_LONG, str(exc), param="messages") from None
    except (EngineError, GenerationTimeout) as exc:
        raise engine_error(exc) from None
    reply.extend(parser.finish())
    return ChatCompletion(
        id=dialect.completion_id(run.request_id),
        request_id=run.request_id,
        created=run.created,
        model=chat.model,
        choices=[reply_choice(run, reply, ChoiceLogprobs.of(logprobs) if chat.logprobs is not None else None)],
        usage=UsageInfo.of(run, parser.reasoning_tokens),
    )


def reply_choice(run: MeteredRun, reply: ChatPiece, logprobs: ChoiceLogprobs | None = None) -> Choice:
    """The choice of a whole reply: content (null beside tool calls), reasoning, calls, and
    `tool_calls` as the finish reason of a reply that ended by calling."""
    message = ChatMessage(
        content=reply.content if reply.content or not reply.tool_calls else None,
        reasoning_content=reply.reasoning or None,
        tool_calls=[_tool_call_out(c) for c in reply.tool_calls] or None,
    )
    return Choice(finish_reason=_finish_reason(run, len(reply.tool_calls)), message=message, logprobs=logprobs)


async def stream(run: MeteredRun, deltas: AsyncGenerator[Delta, None], chat: ChatRequest,
                 parser: ChatOutputParser, dialect: Dialect) -> AsyncIterator[bytes]:
    """The reply as SSE events: reasoning, content and tool-call deltas as the parser makes
    them certain, the finish chunk, usage (when the dialect or the client wants it) where the
    dialect puts it, and [DONE]."""
    chunk_id = dialect.completion_id(run.request_id)
    include_usage = dialect.always_usage or chat.include_usage
    role = "assistant" if dialect.role_on_every_delta else None
    whole_calls = dialect.tool_call_whole and not chat.tool_stream
    calls = 0

    def chunk(delta: DeltaMessage, finish: str | None = None, usage: UsageInfo | None = None,
              logprobs: ChoiceLogprobs | None = None, choices: bool = True) -> bytes:
        return sse_event(ChatCompletionChunk(
            id=chunk_id, request_id=run.request_id, created=run.created, model=chat.model,
            choices=[ChunkChoice(delta=delta, logprobs=logprobs, finish_reason=finish)] if choices else [],
            usage=usage))

    def finish_chunk(reason: str, usage: UsageInfo | None = None) -> bytes:
        # OpenAI's finish delta is empty; Zhipu's names the role with empty content.
        return chunk(DeltaMessage(role=role, content="" if role else None), reason, usage)

    def fault_chunk(reason: str) -> bytes:
        return finish_chunk(reason, UsageInfo.of(run, parser.reasoning_tokens))

    def pieces(piece: ChatPiece, logprobs: ChoiceLogprobs | None = None) -> Iterator[bytes]:
        """The chunks of a parsed piece. A token's logprobs go out with the first of them, or on
        their own while the parser (or a possible stop string) still holds its text."""
        nonlocal calls
        if piece.reasoning:
            yield chunk(DeltaMessage(role=role, reasoning_content=piece.reasoning), logprobs=logprobs)
            logprobs = None
        if piece.content or logprobs is not None:
            yield chunk(DeltaMessage(role=role, content=piece.content), logprobs=logprobs)
        for call in piece.tool_calls:
            if whole_calls:
                yield chunk(DeltaMessage(role=role, tool_calls=[_tool_call_out(call, calls)]))
            else:
                head = ToolCallOut(index=calls, id=call.id, type="function",
                                   function=FunctionCallOut(name=call.name, arguments=""))
                yield chunk(DeltaMessage(role=role, tool_calls=[head]))
                yield chunk(DeltaMessage(role=role, tool_calls=[
                    ToolCallOut(index=calls, function=FunctionCallOut(arguments=call.arguments))]))
            calls += 1

    # What a delta makes goes out as one write, and the role chunk with the first delta's: each
    # write is a system call here and a wake-up of the client, and an upstream's first delta is
    # already in hand when the stream starts (`first_delta_ahead`), so its content would otherwise
    # wait behind a write of its own.
    head = chunk(DeltaMessage(role="assistant", content=""))
    try:
        async for delta in deltas:
            events = head + b"".join(pieces(piece_of(delta, parser),
                                            ChoiceLogprobs.of(delta.logprobs) if delta.logprobs else None))
            head = b""
            if events:
                yield events
    except Exception as exc:
        yield head + b"".join(await stream_fault_events(run, exc, dialect, fault_chunk))
        return
    finally:
        # However this generator ends, the engine stops within a step.
        await deltas.aclose()
    tail = [head, *pieces(parser.finish())]
    usage = UsageInfo.of(run, parser.reasoning_tokens) if include_usage else None
    reason = _finish_reason(run, calls)
    if dialect.usage_in_own_chunk:
        tail.append(finish_chunk(reason))
        if usage is not None:
            tail.append(chunk(DeltaMessage(), usage=usage, choices=False))
    else:
        tail.append(finish_chunk(reason, usage))
    yield b"".join((*tail, SSE_DONE))
