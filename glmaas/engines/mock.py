"""A deterministic engine for API tests: byte-level tokens, a fixed reply, optional pacing.

Each UTF-8 byte is one token (id = byte + len(SPECIALS)), so token counts are easy to check by
hand. The reply (`reply=`, default `DEFAULT_REPLY`) is cut to `max_tokens`; it ends with `stop`
when the whole reply fits and `length` otherwise. `delay` seconds pass before each token, which lets tests disconnect
mid-stream. Its one reply has probability 1: asked for logprobs, each token reports 0.0 and no other
alternative. It cannot follow a grammar, so a constrained request is refused (`InvalidRequest`).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

from glmaas.engines.base import (
    Delta,
    EngineError,
    EngineLoad,
    GenerationRequest,
    InvalidRequest,
    ModelInfo,
    PromptTooLong,
    TokenLogprob,
    Usage,
)
from glmaas.engines.text import IncrementalDecoder, StopMatcher
from glmaas.engines.tool_formats import TOOL_PARSERS

SPECIALS = ("<|im_start|>", "<|im_end|>", "<|endoftext|>")
_SPECIAL_RE = re.compile("(" + "|".join(re.escape(s) for s in SPECIALS) + ")")

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

VOCAB_SIZE = len(SPECIALS) + 256
DEFAULT_REPLY = "This is the mock engine. 你好，世界。"


class MockEngine:
    """Deterministic stand-in for a model; see the module docstring."""

    def __init__(
        self,
        model_id: str = "mock",
        *,
        reply: str = DEFAULT_REPLY,
        delay: float = 0.0,
        context_length: int = 4096,
        fail_after: int | None = None,
        chat_template: str = CHAT_TEMPLATE,
        tool_parser: str | None = None,
    ) -> None:
        self.info = ModelInfo(
            model_id=model_id,
            context_length=context_length,
            chat_template=chat_template,
            eos_token="<|im_end|>",
            tool_parser=tool_parser,
            vocab_size=VOCAB_SIZE,
        )
        # The last request seen, so tests can check what the API asked of the engine.
        self.last_request: GenerationRequest | None = None
        self._reply_ids = self.tokenize(reply, special=False)
        self.delay = delay
        # Raise an engine fault after this many tokens, to test what a fault costs.
        self.fail_after = fail_after
        self._generating = 0

    @classmethod
    def from_spec(cls, model_id: str, options: dict[str, str]) -> MockEngine:
        """Build from `--model ID=mock:delay=0.05,reply=hi,repeat=3,context=64,fail_after=5,tool_parser=glm45`
        options."""
        kwargs: dict = {}
        if "delay" in options:
            kwargs["delay"] = float(options["delay"])
        if "reply" in options:
            kwargs["reply"] = options["reply"]
        if "repeat" in options:
            kwargs["reply"] = kwargs.get("reply", DEFAULT_REPLY) * int(options["repeat"])
        if "context" in options:
            kwargs["context_length"] = int(options["context"])
        if "fail_after" in options:
            kwargs["fail_after"] = int(options["fail_after"])
        if "tool_parser" in options:
            if options["tool_parser"] not in TOOL_PARSERS:
                raise EngineError(f"model {model_id!r}: unknown tool_parser {options['tool_parser']!r}")
            kwargs["tool_parser"] = options["tool_parser"]
        return cls(model_id, **kwargs)

    def tokenize(self, text: str, *, special: bool = True) -> list[int]:
        ids: list[int] = []
        parts = _SPECIAL_RE.split(text) if special else [text]
        for part in parts:
            if special and part in SPECIALS:
                ids.append(SPECIALS.index(part))
            else:
                ids.extend(b + len(SPECIALS) for b in part.encode("utf-8"))
        return ids

    def detokenize(self, token_ids: list[int]) -> str:
        return self._bytes(token_ids).decode("utf-8", errors="replace")

    def _bytes(self, token_ids: list[int]) -> bytes:
        out = bytearray()
        for t in token_ids:
            if 0 <= t < len(SPECIALS):
                out += SPECIALS[t].encode()
            elif t < VOCAB_SIZE:
                out.append(t - len(SPECIALS))
        return bytes(out)

    def load(self) -> EngineLoad:
        """Requests generating now; the mock has no slots to wait for."""
        return EngineLoad(busy=self._generating, waiting=0)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        self._generating += 1
        try:
            async for delta in self._generate(request):
                yield delta
        finally:
            self._generating -= 1

    async def _generate(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        self.last_request = request
        n_prompt = len(request.prompt_token_ids)
        if n_prompt + 1 > self.info.context_length:
            raise PromptTooLong(
                f"prompt has {n_prompt} tokens; the context window of "
                f"{self.info.model_id} is {self.info.context_length}"
            )
        if any(not 0 <= t < VOCAB_SIZE for t in request.prompt_token_ids):
            raise InvalidRequest(f"the prompt holds token ids outside the vocabulary of {VOCAB_SIZE}")
        if request.sampling.constraint is not None:
            raise InvalidRequest(f"the model {self.info.model_id} cannot constrain its output")
        want_logprobs = request.sampling.logprobs is not None
        limit = min(request.sampling.max_tokens, self.info.context_length - n_prompt)
        decoder = IncrementalDecoder()
        stops = StopMatcher(request.sampling.stop)
        produced = 0
        finish = "stop"
        hit_stop = False
        for token in self._reply_ids:
            if produced >= limit:
                finish = "length"
                break
            if self.fail_after is not None and produced >= self.fail_after:
                raise EngineError("the mock engine failed on purpose")
            # Sleeping (even for 0 s) yields to the loop, so a closed stream stops here.
            await asyncio.sleep(self.delay)
            produced += 1
            text, hit_stop = stops.push(decoder.push(self._bytes([token])))
            logprobs = None
            if want_logprobs:
                piece = self.detokenize([token])
                top = ((token, piece, 0.0),) if request.sampling.logprobs else ()
                logprobs = (TokenLogprob(token, piece, 0.0, top),)
            yield Delta((token,), text, logprobs=logprobs)
            if hit_stop:
                break
        tail = ""
        if not hit_stop:
            tail, hit_stop = stops.push(decoder.flush())
            if not hit_stop:
                tail += stops.flush()
        yield Delta(
            (),
            tail,
            logprobs=() if want_logprobs else None,
            finish_reason=finish,  # type: ignore[arg-type]
            usage=Usage(prompt_tokens=n_prompt, completion_tokens=produced),
        )

    async def close(self) -> None:
        return None
