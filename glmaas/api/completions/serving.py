"""Serving a legacy completion: the prompt it needs (a continuation, the middle between a prompt
and a `suffix`, or a document whose `[MASK]` blanks the model fills), the generation it asks for,
and its two wire forms (one JSON body, or SSE chunks). Admission and settlement are the metered
run's (`api/metered.py`), as for chat."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, replace

from glmaas.api.chat.protocol import UsageInfo
from glmaas.api.chat.serving import engine_error, stream_fault_events
from glmaas.api.completions.protocol import (
    Completion,
    CompletionChoice,
    CompletionLogprobs,
    Prompt,
    TextCompletionRequest,
)
from glmaas.api.dialects import OPENAI
from glmaas.api.errors import ApiError, ErrorKind
from glmaas.api.metered import MeteredRun
from glmaas.api.sse import SSE_DONE, sse_event
from glmaas.api.state import AppState
from glmaas.engines.base import (
    BlankFilling,
    Delta,
    Engine,
    EngineError,
    GenerationRequest,
    Infilling,
    PromptTooLong,
    SamplingParams,
    Usage,
)
from glmaas.engines.chat import ChatEngine, TextCall, TextEngine, asks_in_messages
from glmaas.platform.metered import GenerationTimeout


@dataclass(frozen=True)
class TextPrompt:
    """A completion request made ready for its engine. `segments`: when the prompt holds blanks
    the engine fills, its text around them (one more segment than blanks); the reply's text is
    then the whole document, the blanks filled. An upstream (`TextEngine`) takes the request as
    it came: no token ids, and `prompt_tokens` is our estimate until it reports usage."""

    engine: Engine | TextEngine
    token_ids: tuple[int, ...]
    max_tokens: int
    prompt_tokens: int
    echo: str = ""  # the prompt's text, when the reply repeats it before the completion
    segments: tuple[str, ...] | None = None


def _invalid(message: str, param: str) -> ApiError:
    return ApiError(ErrorKind.INVALID_REQUEST, message, param=param)


def build_prompts(state: AppState, req: TextCompletionRequest, account_id: str) -> list[TextPrompt]:
    """The tokenized prompts, a choice each (an upstream's: the request as it came); raises
    `ApiError` when the model is unknown (to `account_id`) or cannot serve the request as asked (a Zhipu upstream;
    several prompts to an upstream; a suffix a model cannot infill; echo beside blanks), and when
    a prompt does not fit."""
    engine = state.registry.get(req.model, account_id)
    if engine is None:
        raise ApiError(ErrorKind.MODEL_NOT_FOUND, f"The model {req.model!r} does not exist.", param="model")
    if asks_in_messages(engine):
        return [_upstream_prompt(engine, req)]
    return [_local_prompt(engine, req, prompt) for prompt in req.prompts]


def _local_prompt(engine: Engine, req: TextCompletionRequest, prompt: Prompt) -> TextPrompt:
    ids = list(engine.tokenize(prompt)) if isinstance(prompt, str) else list(prompt)
    vocab = engine.info.vocab_size
    if vocab is not None and max(ids, default=0) >= vocab:
        raise _invalid(f"The prompt holds token ids outside the vocabulary of {req.model} (0..{vocab - 1}).",
                       "prompt")
    blanks = engine.blank_positions(ids) if isinstance(engine, BlankFilling) else []
    if req.echo and (blanks or req.suffix is not None):
        raise _invalid("echo repeats the prompt of a continuation; a prompt with blanks or a suffix has "
                       "none to repeat.", "echo")
    if req.suffix is not None:
        ids = _infill(engine, req, ids)
        blanks = []
    if req.echo and req.logprobs is not None:
        raise _invalid("echo with logprobs would need the prompt's own logprobs, which are not computed.", "echo")
    room = engine.info.context_length - len(ids)
    if room < 1:
        raise ApiError(ErrorKind.PROMPT_TOO_LONG, f"The prompt has {len(ids)} tokens; {req.model} takes at "
                       f"most {engine.info.context_length - 1} prompt tokens.", param="prompt")
    segments = None
    if blanks:
        cuts = [-1, *blanks, len(ids)]
        segments = tuple(engine.detokenize(ids[a + 1:b]) for a, b in zip(cuts, cuts[1:]))
    echo = "" if not req.echo else prompt if isinstance(prompt, str) else engine.detokenize(ids)
    return TextPrompt(engine, tuple(ids), min(req.max_tokens, room), len(ids), echo, segments)


def _upstream_prompt(engine: ChatEngine, req: TextCompletionRequest) -> TextPrompt:
    """An upstream's prompt: passed on as it came (suffix, echo and all: the upstream answers for
    them), our estimate of its tokens held for."""
    if not (isinstance(engine, TextEngine) and engine.serves_completions()):
        raise _invalid(f"The model {req.model!r} is served by a Zhipu-dialect upstream, and the Zhipu API "
                       "has no legacy completions. Use /v1/chat/completions.", "model")
    if len(req.prompts) != 1:
        raise _invalid(f"The model {req.model!r} is served by an upstream: one prompt per request.", "prompt")
    prompt = req.prompts[0]
    estimate = engine.count_text(prompt if isinstance(prompt, str) else list(prompt))
    room = max(1, engine.info.context_length - estimate)
    return TextPrompt(engine, (), min(req.max_tokens, room), estimate)


def _infill(engine: Engine, req: TextCompletionRequest, prefix: list[int]) -> list[int]:
    """The prompt of fill-in-the-middle, or a 400 when the model cannot infill."""
    fim = engine.infill_prompt(prefix, engine.tokenize(req.suffix or "")) if isinstance(engine, Infilling) else None
    if fim is None:
        raise _invalid(f"The model {req.model!r} cannot fill in the middle (it has no fill-in-the-middle "
                       "tokens); send the prompt without 'suffix'.", "suffix")
    if isinstance(engine, BlankFilling) and len(engine.blank_positions(fim)) != 1:
        raise _invalid("A prompt with [MASK] blanks takes no suffix: put a [MASK] where the text goes.", "suffix")
    return fim


def generate(req: TextCompletionRequest, prompts: list[TextPrompt], request_id: str
             ) -> AsyncGenerator[ChoiceDelta, None]:
    """Start the engine on each prompt; their deltas as they come, each with its choice."""
    return choices([_generate(req, prompt, request_id) for prompt in prompts])


def _generate(req: TextCompletionRequest, prompt: TextPrompt, request_id: str) -> AsyncGenerator[Delta, None]:
    """Start the engine on one prompt: token ids for a local engine, the request for an upstream."""
    if isinstance(prompt.engine, TextEngine):
        return prompt.engine.complete(text_call_of(req, prompt, request_id))  # type: ignore[return-value]
    sampling = SamplingParams(
        max_tokens=prompt.max_tokens, temperature=req.temperature, top_p=req.top_p, seed=req.seed, stop=req.stop,
        frequency_penalty=req.frequency_penalty, presence_penalty=req.presence_penalty,
        logit_bias=req.logit_bias, logprobs=req.logprobs)
    return prompt.engine.generate(GenerationRequest(request_id, prompt.token_ids, sampling))  # type: ignore[return-value]


def text_call_of(req: TextCompletionRequest, prompt: TextPrompt, request_id: str) -> TextCall:
    """The request as an upstream takes it: besides temperature and top_p, only the sampling
    fields the client set travel."""
    optional = {"stop": list(req.stop), "frequency_penalty": req.frequency_penalty,
                "presence_penalty": req.presence_penalty,
                "logit_bias": {str(token): bias for token, bias in req.logit_bias.items()}}
    sampling = {"temperature": req.temperature, "top_p": req.top_p,
                **({"seed": req.seed} if req.seed is not None else {}),  # 0 is a seed
                **{k: v for k, v in optional.items() if v not in (0, [], {})}}
    text = req.prompts[0] if isinstance(req.prompts[0], str) else list(req.prompts[0])
    return TextCall(request_id, text, prompt.max_tokens, sampling, suffix=req.suffix, echo=req.echo,
                    logprobs=req.logprobs, user=req.user, stream=req.stream)


@dataclass(frozen=True)
class ChoiceDelta:
    """A delta of one choice (one prompt's generation), as the metered run reads it: `usage`
    and `finish_reason` only on the request's last delta (`index` -1), which sums the choices'
    usage; a choice's own end is `choice_finish`."""

    index: int
    delta: Delta
    choice_finish: str | None = None
    usage: Usage | None = None
    finish_reason: str | None = None

    @property
    def token_count(self) -> int:
        return self.delta.token_count

    @property
    def exact_count(self) -> bool:
        return self.delta.exact_count


async def choices(generations: list[AsyncGenerator[Delta, None]]) -> AsyncGenerator[ChoiceDelta, None]:
    """The deltas of every generation as they come, tagged with its choice; then one last delta
    with their usage summed and the request's finish reason (`length` if any choice ran out).
    However it ends, every generation is closed (so each engine stops within a step)."""
    ends: dict[int, Delta] = {}
    merged = _interleave(generations)
    try:
        async for index, delta in merged:
            if delta.usage is None:
                yield ChoiceDelta(index, delta)
            else:
                ends[index] = delta
                yield ChoiceDelta(index, replace(delta, usage=None, finish_reason=None),
                                  choice_finish=delta.finish_reason)
    finally:
        await merged.aclose()  # an async for leaves its iterator open when this generator is closed
    usages = [d.usage for d in ends.values() if d.usage is not None]
    usage = Usage(sum(u.prompt_tokens for u in usages), sum(u.completion_tokens for u in usages),
                  sum(u.cached_prompt_tokens for u in usages), any(u.estimated for u in usages))
    finish = "length" if any(d.finish_reason == "length" for d in ends.values()) else "stop"
    yield ChoiceDelta(-1, Delta(), usage=usage, finish_reason=finish)


async def _interleave(generations: list[AsyncGenerator[Delta, None]]) -> AsyncGenerator[tuple[int, Delta], None]:
    """(index, delta) of each generation, run concurrently; the first failure ends them all."""
    if len(generations) == 1:
        try:
            async for delta in generations[0]:
                yield 0, delta
        finally:
            await generations[0].aclose()
        return
    queue: asyncio.Queue[tuple[int, Delta | Exception | None]] = asyncio.Queue()

    async def pump(index: int, generation: AsyncGenerator[Delta, None]) -> None:
        try:
            async for delta in generation:
                queue.put_nowait((index, delta))
            queue.put_nowait((index, None))
        except Exception as exc:
            queue.put_nowait((index, exc))
        finally:
            await generation.aclose()

    tasks = [asyncio.create_task(pump(i, g)) for i, g in enumerate(generations)]
    try:
        running = len(tasks)
        while running:
            index, item = await queue.get()
            if item is None:
                running -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield index, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class Document:
    """The text of a reply as it grows: the echoed prompt, then the generated text; for a prompt
    with blanks, its text around them with each blank's fill in place (`fills`)."""

    def __init__(self, prompt: TextPrompt, logprobs: bool) -> None:
        self._segments = prompt.segments or ()
        self._next = 0  # the next segment to hand out
        self.fills: list[str] | None = [""] * (len(self._segments) - 1) if self._segments else None
        self._head = prompt.echo
        self._emitted = 0  # characters of text handed out so far
        self.logprobs = CompletionLogprobs() if logprobs else None

    def _segments_through(self, blank: int) -> str:
        """The prompt's text up to blank `blank`, not yet handed out."""
        out = ""
        while self._next < len(self._segments) and self._next <= blank:
            out += self._segments[self._next]
            self._next += 1
        return out

    def push(self, delta: Delta) -> tuple[str, CompletionLogprobs | None]:
        """The text a delta adds (with the prompt's text before its blank), and its logprobs."""
        text, self._head = self._head, ""
        text += self._segments_through(delta.blank)
        start = self._emitted + len(text)
        text += delta.text
        if self.fills is not None:
            self.fills[delta.blank] += delta.text
        self._emitted += len(text)
        step = None
        if delta.logprobs:
            step = CompletionLogprobs()
            step.add(delta.logprobs, start)
            if self.logprobs is not None:
                self.logprobs.add(delta.logprobs, start)
        return text, step

    def finish(self) -> str:
        """What remains of the prompt's text after the last blank (and an echo of an empty reply)."""
        text, self._head = self._head, ""
        text += "".join(self._segments[self._next:])
        self._next = len(self._segments)
        self._emitted += len(text)
        return text


def _completion_id(run: MeteredRun) -> str:
    return f"cmpl-{run.request_id}"


async def complete(run: MeteredRun, deltas: AsyncIterator[ChoiceDelta], req: TextCompletionRequest,
                   prompts: list[TextPrompt]) -> Completion:
    """The whole reply as one response body: a choice per prompt."""
    documents = [Document(prompt, req.logprobs is not None) for prompt in prompts]
    texts = [""] * len(prompts)
    finishes: list[str | None] = [None] * len(prompts)
    try:
        async for step in deltas:
            if step.index >= 0:
                texts[step.index] += documents[step.index].push(step.delta)[0]
                finishes[step.index] = step.choice_finish or finishes[step.index]
    except PromptTooLong as exc:
        raise ApiError(ErrorKind.PROMPT_TOO_LONG, str(exc), param="prompt") from None
    except (EngineError, GenerationTimeout) as exc:
        raise engine_error(exc) from None
    choices = [CompletionChoice(text=text + document.finish(), index=i, logprobs=document.logprobs,
                                finish_reason=finish, fills=document.fills)
               for i, (text, document, finish) in enumerate(zip(texts, documents, finishes))]
    return Completion(id=_completion_id(run), created=run.created, model=req.model, choices=choices,
                      usage=UsageInfo.of(run))


async def stream(run: MeteredRun, deltas: AsyncGenerator[ChoiceDelta, None], req: TextCompletionRequest,
                 prompts: list[TextPrompt]) -> AsyncIterator[bytes]:
    """The reply as `text_completion` SSE chunks, each choice's text as it comes and its finish
    chunk (with `fills` for a prompt with blanks) when it ends, usage in a last chunk of its own
    when `stream_options.include_usage` asks, and [DONE]."""
    documents = [Document(prompt, False) for prompt in prompts]

    def chunk(choice: CompletionChoice | None, usage: UsageInfo | None = None) -> bytes:
        return sse_event(Completion(id=_completion_id(run), created=run.created, model=req.model,
                                    choices=[choice] if choice else [], usage=usage))

    def finish_chunk(reason: str, usage: UsageInfo | None = None) -> bytes:
        return chunk(CompletionChoice(text="", finish_reason=reason), usage)

    try:
        async for step in deltas:
            if step.index < 0:
                continue
            document = documents[step.index]
            text, logprobs = document.push(step.delta)
            if step.choice_finish is not None:
                yield chunk(CompletionChoice(text=text + document.finish(), index=step.index, logprobs=logprobs,
                                             finish_reason=step.choice_finish, fills=document.fills))
            elif text or logprobs is not None:
                yield chunk(CompletionChoice(text=text, index=step.index, logprobs=logprobs))
    except Exception as exc:
        for event in await stream_fault_events(run, exc, OPENAI, finish_chunk):
            yield event
        return
    finally:
        await deltas.aclose()
    if req.include_usage:
        yield chunk(None, UsageInfo.of(run))
    yield SSE_DONE
