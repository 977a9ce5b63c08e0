"""The decode loop: one thread owns the llama.cpp context and runs every request through it.

Each step builds one `llama_batch`: first the last sampled token of every generating sequence
(one token each, its logits wanted), then prompt tokens of sequences still prefilling, at most
`chunk` of them, so a long prompt is fed over several steps while the others keep decoding. One
`llama_decode` computes it all; then each sequence samples from its own logits row with its own
sampler, and its deltas go to its event loop in one `call_soon_threadsafe` per loop and step.
A constrained sequence's sampler holds its own grammar matcher, which masks only that sequence's
logits row; the step's masks are computed on a helper thread while `llama_decode` runs. A
sequence whose sampling fails (its grammar rejects a token) fails alone.

Every slot is a llama.cpp sequence id and remembers the tokens whose keys and values it holds.
By default (`cells=0`) every slot has a KV region of its own of `slot_context` cells
(`kv_unified=false`): slots × context reserved, and a sequence's output independent of its
neighbours (measured, docs/performance.md). The zeros llama.cpp writes over a new cache are given
back to the kernel (`zero_pages.py`), so a region's memory becomes resident as its cells are
written: the process holds what its sequences have used, not slots × context. With `cells=N`
the slots share one KV cache of N cells instead (`kv_unified=true`), which caps memory at N cells
however long the sequences grow, rather than at slots × context: a sequence may grow to
`slot_context` tokens, and is admitted only while the cells it may come to hold (prompt +
max_new) fit beside those of the running sequences and the prefixes idle slots keep (which give
way, least recently used first, when a sequence needs the room). Flash attention skips the cells a
sequence's mask hides, so attention costs about a sequence's own length, not the whole cache's;
but how far the cache is filled changes the order of attention's sums, so a greedy sequence
decoded beside others may differ from the same sequence alone.
A new request takes the free slot whose tokens share the longest prefix with its prompt and keeps
that prefix (reported as cached prompt tokens); the rest is removed with `llama_memory_seq_rm`.
When a busy slot holds a longer prefix (a system prompt that every request shares, say), it is
copied into a free slot instead of being computed again (`_copy_slot`).
Requests join at any step (when a slot and room are free) and leave at any step: finished,
stopped or cancelled sequences give back their slot before the next batch is built.

llama.cpp's thread count is fixed (`threads=N`) or, by default, set before each step to what a
`ThreadTuner` (`thread_tuner.py`) chooses, told after each `llama_decode` how long it took: more
threads on quiet cores, fewer when other work holds them. Changing it between steps changes no
output: greedy and seeded outputs are the same at every thread count
(tests/engines/test_llamacpp_threads.py, docs/performance.md).
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import llama_cpp
import numpy as np

from glmaas.engines.base import Delta, EngineError, EngineLoad, FinishReason, TokenLogprob, Usage
from glmaas.engines.constrained import GrammarMatcher
from glmaas.engines.decode_thread import DecodeThread, deliver
from glmaas.engines.sampling import Pick, Sampler
from glmaas.engines.text import IncrementalDecoder, StopMatcher
from glmaas.engines.thread_tuner import ThreadTuner, free_cores, usable_cores
from glmaas.engines.zero_pages import anonymous_ranges, release_zero_pages

log = logging.getLogger(__name__)

# A copy tags the donor's cells with one more sequence id (shared cache), or reads the donor's
# cells out and writes them into the slot's region (~23 KB a cell for SmolLM2-135M, two memory
# copies), while prefilling costs milliseconds a token on one loaded core: a copy pays off from a
# few tokens.
_COPY_MIN = 8


@dataclass(frozen=True)
class LoopConfig:
    slots: int
    slot_context: int  # the most tokens (prompt + output) of one sequence
    chunk: int
    threads: int  # llama.cpp threads; 0: chosen step by step by a `ThreadTuner` (up to every core)
    cells: int  # KV cache cells shared by all slots (at least slot_context); 0: a region per slot


@dataclass(frozen=True)
class Reservation:
    """The memory a loaded model holds: its weights and its KV cache."""

    model_bytes: int
    kv_cells: int
    kv_bytes_per_cell: int
    kv_released_bytes: int = 0  # of the KV cache, given back at start until sequences use it

    @property
    def kv_bytes(self) -> int:
        return self.kv_cells * self.kv_bytes_per_cell


def kv_bytes_per_cell(model: llama_cpp.llama_model_p) -> int:
    """Bytes one KV cell takes: a key and a value (f16) per layer and KV head."""
    head_dim = llama_cpp.llama_model_n_embd(model) // llama_cpp.llama_model_n_head(model)
    return llama_cpp.llama_model_n_layer(model) * 2 * llama_cpp.llama_model_n_head_kv(model) * head_dim * 2


@dataclass(eq=False)
class Sequence:
    """One request inside the loop. Fields below `queue` belong to the loop thread."""

    request_id: str
    prompt: list[int]
    max_new: int
    sampler: Sampler
    stops: tuple[str, ...]
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue
    slot: _Slot | None = None
    n_fed: int = 0  # prompt tokens whose KV is in the slot
    n_cached: int = 0  # of those, reused from an earlier request
    pending: int = -1  # last sampled token, fed at the next step
    n_generated: int = 0
    cancelled: bool = False  # set by the request's task; read by the loop
    finished: bool = False
    decoder: IncrementalDecoder = field(default_factory=IncrementalDecoder)
    matcher: StopMatcher = field(init=False)

    def __post_init__(self) -> None:
        self.matcher = StopMatcher(self.stops)

    @property
    def prefilling(self) -> bool:
        return self.n_fed < len(self.prompt)

    @property
    def cells(self) -> int:
        """The most KV cells this sequence can come to hold."""
        return len(self.prompt) + self.max_new


@dataclass(eq=False)
class _Slot:
    seq_id: int
    tokens: list[int] = field(default_factory=list)  # what the KV cache holds, by position
    owner: Sequence | None = None
    last_used: int = 0


def common_prefix(a: list[int], b: list[int]) -> int:
    """Length of the longest common prefix of two token lists."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n  # a[:lo] == b[:lo], a[:hi] != b[:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid
    return lo


class _Batch:
    """A `llama_batch` with numpy views over its arrays, refilled every step."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.raw = llama_cpp.llama_batch_init(capacity, 0, 1)
        self.token = np.ctypeslib.as_array(self.raw.token, shape=(capacity,))
        self.pos = np.ctypeslib.as_array(self.raw.pos, shape=(capacity,))
        self.n_seq_id = np.ctypeslib.as_array(self.raw.n_seq_id, shape=(capacity,))
        self.logits = np.ctypeslib.as_array(self.raw.logits, shape=(capacity,))
        self._seq_id = self.raw.seq_id
        self.n = 0

    def clear(self) -> None:
        self.n = 0

    def add(self, tokens: list[int], start_pos: int, seq_id: int, want_last_logits: bool) -> None:
        n, k = self.n, len(tokens)
        self.token[n : n + k] = tokens
        self.pos[n : n + k] = np.arange(start_pos, start_pos + k, dtype=np.int32)
        self.n_seq_id[n : n + k] = 1
        self.logits[n : n + k] = 0
        if want_last_logits:
            self.logits[n + k - 1] = 1
        for i in range(n, n + k):
            self._seq_id[i][0] = seq_id
        self.n = n + k
        self.raw.n_tokens = self.n

    def free(self) -> None:
        llama_cpp.llama_batch_free(self.raw)


def _prepare_all(grammars: list[GrammarMatcher]) -> None:
    for grammar in grammars:
        grammar.prepare()


class DecodeLoop(DecodeThread[Sequence]):
    """Owns a llama.cpp context and the thread that decodes all sequences; see module docstring."""

    def __init__(self, model: llama_cpp.llama_model_p, vocab: llama_cpp.llama_vocab_p, config: LoopConfig) -> None:
        self._vocab = vocab
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
        cparams = llama_cpp.llama_context_default_params()
        self.shared_cache = config.cells > 0
        cparams.n_seq_max = config.slots
        cparams.n_batch = config.chunk + config.slots
        cparams.n_ubatch = cparams.n_batch
        # A fixed count, or the tuner's (it starts with one thread and moves between steps).
        cores = usable_cores()
        self.tuner = (ThreadTuner(cores, free_cores=lambda running: free_cores(cores, running))
                      if config.threads <= 0 else None)
        self.threads = self.tuner.best if self.tuner is not None else config.threads
        cparams.n_threads = cparams.n_threads_batch = self.threads
        if self.shared_cache:
            # One cache for all slots, sized by need (see the module docstring); flash attention
            # skips the cells of other sequences, which a plain attention would multiply through.
            cparams.n_ctx = max(config.cells, config.slot_context)
            cparams.kv_unified = True
            cparams.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
        else:
            cparams.n_ctx = config.slots * config.slot_context
            cparams.kv_unified = False
        cparams.no_perf = True
        mapped_before = anonymous_ranges()
        ctx = llama_cpp.llama_init_from_model(model, cparams)
        if not ctx:
            raise EngineError("llama.cpp could not create a context")
        self._ctx = ctx
        self._mem = llama_cpp.llama_get_memory(ctx)
        self.cells = llama_cpp.llama_n_ctx(ctx)
        self.slot_context = min(config.slot_context, llama_cpp.llama_n_ctx_seq(ctx))
        per_cell = kv_bytes_per_cell(model)
        # llama.cpp has just written zeros over the whole KV cache; give those pages back, so that
        # the cache becomes resident as sequences use it (zero_pages.py). Only in new ranges at
        # least as long as the cache, which is one allocation: other code's buffers are rarely
        # that large (a model with sliding-window layers has two smaller caches: left resident).
        released = release_zero_pages(mapped_before, self.cells * per_cell)
        self.reservation = Reservation(llama_cpp.llama_model_size(model), self.cells, per_cell, released)
        self.chunk = config.chunk
        self._batch = _Batch(cparams.n_batch)
        self._slots = [_Slot(i) for i in range(config.slots)]
        self._pieces: dict[tuple[int, bool], bytes] = {}
        self._steps = 0
        self._masks = ThreadPoolExecutor(1, thread_name_prefix="llamacpp-grammar")
        self._start_thread("llamacpp-decode")

    # -- called from any thread ------------------------------------------------------------

    def token_bytes(self, token: int, special: bool = True) -> bytes:
        """The bytes of one token, cached (the vocabulary never changes)."""
        key = (token, special)
        piece = self._pieces.get(key)
        if piece is None:
            buf = ctypes.create_string_buffer(64)
            n = llama_cpp.llama_token_to_piece(self._vocab, token, buf, 64, 0, special)
            if n < 0:
                buf = ctypes.create_string_buffer(-n)
                n = llama_cpp.llama_token_to_piece(self._vocab, token, buf, -n, 0, special)
            piece = buf.raw[:n]
            self._pieces[key] = piece
        return piece

    def load(self) -> EngineLoad:
        """Slots in use, sequences waiting, KV cells holding tokens and llama.cpp's thread count
        now. Read without the loop's lock (the decode thread never waits for a scrape):
        lengths of lists it replaces whole or appends to, each consistent on its own."""
        slots = self._slots
        return EngineLoad(busy=sum(1 for s in slots if s.owner is not None),
                          waiting=len(self._inbox) + len(self._waiting),
                          slots=len(slots), kv_cells=len(slots) * self.slot_context,
                          kv_cells_used=sum(len(s.tokens) for s in slots), threads=self.threads)

    def close(self) -> None:
        self._stop_thread()
        self._masks.shutdown()
        self._batch.free()
        llama_cpp.llama_free(self._ctx)

    # -- the loop thread -------------------------------------------------------------------

    def step(self) -> None:
        """Admit waiting sequences, feed one batch, sample and deliver each sequence's token."""
        self._steps += 1
        self._admit()
        batch = self._batch
        batch.clear()
        outputs: list[Sequence] = []
        for seq in self._running:
            if not seq.prefilling:
                slot = seq.slot
                assert slot is not None
                batch.add([seq.pending], len(slot.tokens), slot.seq_id, True)
                slot.tokens.append(seq.pending)
                outputs.append(seq)
        budget = batch.capacity - batch.n
        budget = min(budget, self.chunk)
        for seq in self._running:
            if budget <= 0:
                break
            if seq.prefilling:
                slot = seq.slot
                assert slot is not None
                part = seq.prompt[seq.n_fed : seq.n_fed + budget]
                done = seq.n_fed + len(part) == len(seq.prompt)
                batch.add(part, seq.n_fed, slot.seq_id, done)
                slot.tokens.extend(part)
                seq.n_fed += len(part)
                budget -= len(part)
                if done:
                    outputs.append(seq)
        if batch.n == 0:
            return
        grammars = [s.sampler.grammar for s in outputs if s.sampler.grammar is not None]
        masks = self._masks.submit(_prepare_all, grammars) if grammars else None
        tuner = self.tuner
        if tuner is not None and (threads := tuner.choose(batch.n)) != self.threads:
            # Takes effect at this decode; outputs do not depend on it (docs/performance.md).
            self.threads = threads
            llama_cpp.llama_set_n_threads(self._ctx, threads, threads)
        start = time.perf_counter()
        rc = llama_cpp.llama_decode(self._ctx, batch.raw)
        if tuner is not None:
            tuner.observe(self.threads, batch.n, time.perf_counter() - start)
        if masks is not None:
            masks.result()  # before any sampler reads a mask (or a failed decode frees them)
        if rc != 0:
            raise EngineError(f"llama_decode returned {rc}")
        # Output rows follow batch order; `outputs` was filled in that same order.
        logits = np.ctypeslib.as_array(
            llama_cpp.llama_get_logits(self._ctx), shape=(len(outputs), self.n_vocab)
        )
        deliveries: dict[asyncio.AbstractEventLoop, list] = {}
        for row, seq in enumerate(outputs):
            item: Delta | BaseException
            try:
                item = self._advance(seq, seq.sampler.sample(logits[row]))
            except EngineError as exc:  # this sequence's fault only: the batch goes on
                self._release(seq)
                item = exc
            deliveries.setdefault(seq.loop, []).append((seq.queue, item))
        self._running = [s for s in self._running if not s.finished]
        for loop, items in deliveries.items():
            try:
                loop.call_soon_threadsafe(deliver, items)
            except RuntimeError:  # the request's event loop is gone: nobody is listening
                for seq in outputs:
                    if seq.loop is loop:
                        seq.cancelled = True

    def _advance(self, seq: Sequence, pick: Pick) -> Delta:
        """Account one sampled token: its text, its logprobs, and whether the sequence ends here
        (an end-of-generation token, a stop string, a grammar completed, or `max_tokens`)."""
        token = pick.token
        seq.n_generated += 1
        finish: FinishReason | None = None
        text, hit = "", False
        logprobs: tuple[TokenLogprob, ...] | None = None if pick.logprob is None else ()
        if llama_cpp.llama_vocab_is_eog(self._vocab, token):
            finish = "stop"  # the end token is counted but never reported as a logprob
        else:
            text, hit = seq.matcher.push(seq.decoder.push(self.token_bytes(token, special=False)))
            if logprobs is not None:
                logprobs = (self._token_logprob(pick),)
            grammar = seq.sampler.grammar
            if hit or (grammar is not None and grammar.complete):
                finish = "stop"
            elif seq.n_generated >= seq.max_new:
                finish = "length"
        if finish is None:
            seq.pending = token
            return Delta((token,), text, logprobs=logprobs)
        if not hit:  # text after a stop string is dropped; otherwise release what was held back
            tail, hit = seq.matcher.push(seq.decoder.flush())
            text += tail if hit else tail + seq.matcher.flush()
        self._release(seq)
        usage = Usage(len(seq.prompt), seq.n_generated, seq.n_cached)
        return Delta((token,), text, finish_reason=finish, usage=usage, logprobs=logprobs)

    def _token_logprob(self, pick: Pick) -> TokenLogprob:
        def text(token: int) -> str:
            return self.token_bytes(token, special=False).decode("utf-8", errors="replace")

        top = tuple((t, text(t), lp) for t, lp in pick.top)
        return TokenLogprob(pick.token, text(pick.token), float(pick.logprob or 0.0), top)

    def _admit(self) -> None:
        """Give free slots to waiting sequences, in order, while the cache has room for them,
        reusing the longest cached prefix of the prompt: a free slot that holds it is taken as
        is; one held by any other slot (busy or not) is copied into the least recently used free
        slot when that saves `_COPY_MIN` tokens."""
        while self._waiting:
            free = [s for s in self._slots if s.owner is None]
            if not free:
                return
            seq = self._waiting[0]
            shared = {s.seq_id: common_prefix(s.tokens, seq.prompt) for s in self._slots}
            slot = max(free, key=lambda s: (shared[s.seq_id], -s.last_used))
            donor = max(self._slots, key=lambda s: shared[s.seq_id])
            copy = shared[donor.seq_id] - shared[slot.seq_id] >= _COPY_MIN
            if copy or shared[slot.seq_id] == 0:
                slot = min(free, key=lambda s: s.last_used)  # evict the least recently used
            if not self._make_room(seq, slot):
                return  # the head waits for a running sequence to end
            self._waiting.popleft()
            if copy and donor.tokens:  # (an idle donor may have given way)
                self._copy_slot(donor, slot)
            # Keep at least the last prompt token to compute: its logits give the first token.
            keep = min(common_prefix(slot.tokens, seq.prompt), len(seq.prompt) - 1)
            if len(slot.tokens) > keep:
                llama_cpp.llama_memory_seq_rm(self._mem, slot.seq_id, keep, -1)
                del slot.tokens[keep:]
            slot.owner = seq
            seq.slot = slot
            seq.n_fed = seq.n_cached = keep
            self._running.append(seq)

    def _make_room(self, seq: Sequence, slot: _Slot) -> bool:
        """Whether `seq` fits in the cache once it owns `slot`, counting every running sequence at
        its most and every idle slot's prefix; the other idle prefixes give way, least recently
        used first, until it does. Shared cells are counted once per slot: a bound."""
        if not self.shared_cache:
            return True  # every slot has its own region

        def held(s: _Slot) -> int:
            return s.owner.cells if s.owner is not None else len(s.tokens)

        used = sum(held(s) for s in self._slots if s is not slot) + seq.cells
        idle = sorted((s for s in self._slots if s.owner is None and s is not slot and s.tokens),
                      key=lambda s: s.last_used)
        while used > self.cells and idle:
            victim = idle.pop(0)
            used -= len(victim.tokens)
            llama_cpp.llama_memory_seq_rm(self._mem, victim.seq_id, -1, -1)
            victim.tokens.clear()
        return used <= self.cells

    def _copy_slot(self, src: _Slot, dst: _Slot) -> None:
        """Give `dst` the cells `src` holds; the caller trims the copy to the prefix it needs."""
        llama_cpp.llama_memory_seq_rm(self._mem, dst.seq_id, -1, -1)
        if self.shared_cache:
            # The cells are tagged with one more sequence id, not copied.
            llama_cpp.llama_memory_seq_cp(self._mem, src.seq_id, dst.seq_id, -1, -1)
        else:
            # llama.cpp's own copy between regions moves the whole region, written cells or not,
            # which would make all of `dst` resident (zero_pages.py); the sequence's saved state
            # holds only the cells `src` uses, written into `dst`'s region at the same positions.
            size = llama_cpp.llama_state_seq_get_size(self._ctx, src.seq_id)
            state = (ctypes.c_uint8 * size)()
            written = llama_cpp.llama_state_seq_get_data(self._ctx, state, size, src.seq_id)
            if not written or llama_cpp.llama_state_seq_set_data(self._ctx, state, written, dst.seq_id) != written:
                llama_cpp.llama_memory_seq_rm(self._mem, dst.seq_id, -1, -1)
                dst.tokens = []  # computed again instead
                return
        dst.tokens = list(src.tokens)

    def _release(self, seq: Sequence) -> None:
        seq.finished = True
        slot = seq.slot
        if slot is not None:
            slot.owner = None
            slot.last_used = self._steps
            seq.slot = None

    def _drop_cancelled(self) -> None:
        for seq in [s for s in self._running if s.cancelled]:
            self._release(seq)
        self._running = [s for s in self._running if not s.finished]
        super()._drop_cancelled()

    def _forget(self, seq: Sequence) -> None:
        self._release(seq)

    def _after_failure(self) -> None:
        # A failed decode may leave a slot's cache out of step with its token list.
        for slot in self._slots:
            if slot.owner is None:
                llama_cpp.llama_memory_seq_rm(self._mem, slot.seq_id, -1, -1)
                slot.tokens.clear()
