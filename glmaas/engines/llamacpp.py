"""GGUF models run in process by llama.cpp, many requests sharing one batched decode loop.

The model and its llama.cpp context live in `DecodeLoop` (`llamacpp_batch.py`), whose one thread
owns the context: every step it feeds one token for each generating sequence plus a chunk of some
waiting prompt into a single `llama_batch` (one sequence id per request slot), samples each
sequence's next token and hands the deltas to the request's event loop. This module is the
`Engine` face of it: loading, GGUF metadata, tokenizer, and the asyncio side of each request.

Spec options (`--model ID=llamacpp:PATH,threads=auto,slots=16,ctx=2048,cells=0,chunk=256`):
  threads  CPU threads for llama.cpp: `auto` (the default) moves between steps, from 1 up to every
           core the process may use, to the count that makes the most tokens per second now
           (fewer when other work holds cores: `thread_tuner.py`); N: always N
  slots    sequences decoded together (default 16)
  ctx      context window of one sequence, in tokens (default: min(2048, trained context))
  cells    0 (the default): a region of ctx cells per slot (slots x ctx reserved, resident only
           as sequences write them; a sequence's seeded or greedy output never depends on its
           neighbours, see llamacpp_batch.py);
           N (at least ctx): KV cache cells all sequences share: the cache holds N tokens in all,
           a request waits until the tokens it may come to hold fit, and memory is capped at N
           cells however long the sequences grow, but a sequence's sums follow how full the
           cache is
  chunk    most prompt tokens fed per step; longer prompts are prefilled over several steps
           interleaved with decoding (default 256)
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import llama_cpp

from glmaas.engines.base import (
    Delta,
    EngineError,
    EngineLoad,
    GenerationRequest,
    InvalidRequest,
    ModelInfo,
    PromptTooLong,
    Usage,
)
from glmaas.engines.constrained import GrammarMatcher, Grammars
from glmaas.engines.decode_thread import followed
from glmaas.engines.llamacpp_batch import DecodeLoop, LoopConfig, Sequence
from glmaas.engines.llamacpp_params import model_params
from glmaas.engines.sampling import Sampler
from glmaas.engines.tool_formats import TOOL_PARSERS

log = logging.getLogger(__name__)

DEFAULT_SLOTS = 16
DEFAULT_SLOT_CONTEXT = 2048
# A region of ctx cells per slot (0) by default: a seeded or greedy sequence's output then never
# depends on its neighbours, which the shared cache (cells=N) gives up for a firm cap on memory.
# The regions' 750 MB for SmolLM2-135M (16 x 2048 cells of 23 KB) are reserved, not resident: a
# page becomes resident when a sequence writes its cells (zero_pages.py), so 16 sequences of ~500
# tokens hold ~190 MB either way. See docs/performance.md, "Slots and the KV cache".
DEFAULT_CELLS = 0
DEFAULT_CHUNK = 256
_GGML_LOG_WARN, _GGML_LOG_ERROR = 3, 4  # enum ggml_log_level


@llama_cpp.llama_log_callback
def _log_to_python(level: int, text: bytes, _user_data: ctypes.c_void_p) -> None:
    # llama.cpp narrates every load at INFO on stderr; keep only warnings and errors, via logging.
    if level in (_GGML_LOG_WARN, _GGML_LOG_ERROR):
        message = text.decode("utf-8", errors="replace").rstrip()
        log.log(logging.WARNING if level == _GGML_LOG_WARN else logging.ERROR, "%s", message)


_backend_ready = False


def init_backend() -> None:
    """Start llama.cpp once per process, its logging routed to `logging` (warnings and errors)."""
    global _backend_ready
    if not _backend_ready:
        llama_cpp.llama_log_set(_log_to_python, ctypes.c_void_p(0))
        llama_cpp.llama_backend_init()
        _backend_ready = True


def load_model(model_id: str, path: Path) -> llama_cpp.llama_model_p:
    """The GGUF file at `path`, loaded for the CPU, or an `EngineError` that names it."""
    init_backend()
    # The plain CPU layout (`llamacpp_params`): ggml's AMX layout crashes at the first decode.
    model = llama_cpp.llama_model_load_from_file(str(path).encode(), model_params())
    if not model:
        raise EngineError(f"model {model_id!r}: llama.cpp could not load {path.name}")
    return model


def tokenize_text(vocab: llama_cpp.llama_vocab_p, text: str, *, special: bool) -> list[int]:
    """Token ids of `text` in `vocab`; special-token markup parsed only when `special`; no BOS."""
    data = text.encode("utf-8")
    cap = len(data) + 8
    while True:
        out = (llama_cpp.llama_token * cap)()
        n = llama_cpp.llama_tokenize(vocab, data, len(data), out, cap, False, special)
        if n >= 0:
            return list(out[:n])
        cap = -n  # too small: llama.cpp says how many it needs


def model_metadata(model: llama_cpp.llama_model_p, key: str) -> str | None:
    """A GGUF metadata value as text, or None when the key is absent."""
    size = 1 << 12
    while True:
        buf = ctypes.create_string_buffer(size)
        n = llama_cpp.llama_model_meta_val_str(model, key.encode(), buf, size)
        if n < 0:
            return None
        if n < size:
            return buf.value.decode("utf-8", errors="replace")
        size = n + 1  # a chat template can be longer than the first guess


class LlamaCppEngine:
    """A GGUF model served by a shared batched decode loop; see the module docstring."""

    def __init__(
        self,
        model_id: str,
        path: Path,
        *,
        threads: int | None = None,  # None: chosen step by step (`threads=auto`)
        slots: int = DEFAULT_SLOTS,
        slot_context: int | None = None,
        cells: int = DEFAULT_CELLS,
        chunk: int = DEFAULT_CHUNK,
        tool_parser: str | None = None,
    ) -> None:
        model = self._model = load_model(model_id, path)
        self.path = path
        self._vocab = llama_cpp.llama_model_get_vocab(model)
        n_ctx_train = llama_cpp.llama_model_n_ctx_train(model)
        per_slot = slot_context or min(DEFAULT_SLOT_CONTEXT, n_ctx_train)
        slot_context = max(16, min(per_slot, n_ctx_train))
        config = LoopConfig(
            slots=max(1, slots),
            slot_context=slot_context,
            chunk=max(1, chunk),
            threads=threads or 0,
            cells=max(cells, slot_context) if cells > 0 else 0,
        )
        self._loop = DecodeLoop(model, self._vocab, config)
        self.slots = config.slots  # sequences decoded together (background work takes a share)
        self.reservation = self._loop.reservation  # what it holds in memory, told at start
        n_vocab = self._loop.n_vocab
        self._grammars = Grammars.for_llamacpp(
            self._vocab, n_vocab, lambda: [t for t in range(n_vocab) if llama_cpp.llama_vocab_is_eog(self._vocab, t)])
        self.info = ModelInfo(
            model_id=model_id,
            context_length=self._loop.slot_context,
            chat_template=model_metadata(model, "tokenizer.chat_template"),
            bos_token=self._token_text(llama_cpp.llama_vocab_bos(self._vocab)),
            eos_token=self._token_text(llama_cpp.llama_vocab_eos(self._vocab)),
            owned_by="glmaas",
            tool_parser=tool_parser,
            vocab_size=self._loop.n_vocab,
        )

    @classmethod
    def from_spec(cls, model_id: str, path: Path, options: dict[str, str]) -> LlamaCppEngine:
        """Build from the options of `--model ID=llamacpp:PATH,threads=auto,slots=16,ctx=2048,cells=0`
        (and `tool_parser=NAME` where the chat template does not tell the tool-call format)."""
        options = dict(options)
        tool_parser = options.pop("tool_parser", None)
        threads = options.pop("threads", "auto")
        if tool_parser is not None and tool_parser not in TOOL_PARSERS:
            raise EngineError(f"model {model_id!r}: unknown tool_parser {tool_parser!r}; "
                              f"known: {', '.join(TOOL_PARSERS)}")
        known = {"slots", "ctx", "cells", "chunk"}
        unknown = set(options) - known
        if unknown:
            raise EngineError(f"model {model_id!r}: unknown llamacpp options {sorted(unknown)}")
        try:
            ints = {k: int(v) for k, v in options.items()}
            fixed_threads = None if threads == "auto" else int(threads)
        except ValueError as e:
            raise EngineError(f"model {model_id!r}: llamacpp options are integers, threads=auto or "
                              f"a number ({e})") from None
        if fixed_threads is not None and fixed_threads < 1:
            raise EngineError(f"model {model_id!r}: threads={threads}: at least 1, or auto")
        return cls(
            model_id,
            path,
            threads=fixed_threads,
            slots=ints.get("slots", DEFAULT_SLOTS),
            slot_context=ints.get("ctx"),
            cells=ints.get("cells", DEFAULT_CELLS),
            chunk=ints.get("chunk", DEFAULT_CHUNK),
            tool_parser=tool_parser,
        )

    # -- tokenizer ---------------------------------------------------------------------------

    def tokenize(self, text: str, *, special: bool = True) -> list[int]:
        """Token ids of `text`; special tokens parsed when `special`; never adds BOS."""
        return tokenize_text(self._vocab, text, special=special)

    def token_bytes(self, token: int) -> bytes:
        """The bytes a token stands for; special tokens (e.g. `<|im_end|>`) render as their text."""
        return self._loop.token_bytes(token)

    def detokenize(self, token_ids: list[int]) -> str:
        """The text of `token_ids` (special tokens rendered as their text)."""
        return b"".join(self.token_bytes(t) for t in token_ids).decode("utf-8", errors="replace")

    def infill_prompt(self, prefix: list[int], suffix: list[int]) -> list[int] | None:
        """`<fim_prefix> prefix <fim_suffix> suffix <fim_middle>` (prefix-suffix-middle order) with
        the fill-in-the-middle tokens the GGUF names; None when it names none."""
        pre, suf, mid = (llama_cpp.llama_vocab_fim_pre(self._vocab), llama_cpp.llama_vocab_fim_suf(self._vocab),
                         llama_cpp.llama_vocab_fim_mid(self._vocab))
        if min(pre, suf, mid) < 0:
            return None
        return [pre, *prefix, suf, *suffix, mid]

    def _token_text(self, token: int) -> str:
        return self.token_bytes(token).decode("utf-8", errors="replace") if token >= 0 else ""

    # -- generation --------------------------------------------------------------------------

    def active_sequences(self) -> int:
        """Requests holding a slot or waiting for one (for tests and metrics)."""
        return self._loop.active_sequences()

    def load(self) -> EngineLoad:
        """Slots busy, requests waiting, KV cells used, threads now (`DecodeLoop.load`)."""
        return self._loop.load()

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        """Stream the continuation of the prompt; see `Engine.generate`."""
        prompt = list(request.prompt_token_ids)
        n_ctx = self.info.context_length
        if len(prompt) + 1 > n_ctx:
            raise PromptTooLong(
                f"prompt has {len(prompt)} tokens; the context window of "
                f"{self.info.model_id} is {n_ctx}"
            )
        if not prompt:
            raise EngineError("the prompt is empty")
        if min(prompt) < 0 or max(prompt) >= self._loop.n_vocab:
            # Checked here: inside the shared batch a bad id would fail every request in flight.
            raise InvalidRequest(f"the prompt holds token ids outside the vocabulary of {self._loop.n_vocab}")
        params = request.sampling
        if params.logit_bias and not all(0 <= t < self._loop.n_vocab for t in params.logit_bias):
            raise InvalidRequest(f"logit_bias names token ids outside the vocabulary of {self._loop.n_vocab}")
        grammar: GrammarMatcher | None = None
        if params.constraint is not None:
            # Raises ConstraintError; off the event loop: the first one builds the grammar tokenizer.
            grammar = await asyncio.to_thread(self._grammars.matcher, params.constraint)
        max_new = min(params.max_tokens, n_ctx - len(prompt))
        if max_new <= 0:
            yield Delta(finish_reason="length", usage=Usage(len(prompt), 0))
            return
        queue: asyncio.Queue[Delta | BaseException] = asyncio.Queue()
        seq = Sequence(
            request_id=request.request_id,
            prompt=prompt,
            max_new=max_new,
            sampler=Sampler(params, prompt, grammar),
            stops=params.stop,
            loop=asyncio.get_running_loop(),
            queue=queue,
        )
        async for delta in followed(self._loop, seq, queue):
            yield delta

    async def close(self) -> None:
        """Stop the decode loop and free the context and the model."""
        if self._model is None:
            return
        await asyncio.to_thread(self._loop.close)
        llama_cpp.llama_model_free(self._model)
        self._model = None
