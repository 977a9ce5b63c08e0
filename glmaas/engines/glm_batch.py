"""The GLM decode loop: one thread owns the model and a slot KV cache and decodes every request.

A request is a Part A (its prompt, with one blank or more) and a Part B to generate: for each
blank in turn, `[S]` at the blank's position with block position 1, then one token at a time
until `[E]` (glm.md §1.4–1.5, as `model/glm_generate.py` does for one sequence). Each request
holds a slot of the cache (`SlotKVCache`), its live sequences kept in the first slots. A step
first prefills the prompts of waiting requests while slots are free (each alone: Part A is
bidirectional), then feeds one token of every generating sequence in one forward pass (a ragged
batch: each row at its own length, its own mask), samples each row with the request's own
`Sampler`, and hands the deltas to the request's event loop in one `call_soon_threadsafe` per
loop and step. Requests join between any two steps and leave at any step (finished, stopped or
cancelled); a leaving slot's place is filled by moving the later slots down.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

import torch

from glmaas.engines.base import Delta, EngineError, FinishReason, TokenLogprob, Usage
from glmaas.engines.decode_thread import DecodeThread, deliver
from glmaas.engines.sampling import Pick, Sampler
from glmaas.engines.text import IncrementalDecoder, StopMatcher
from glmaas.model.glm import GLM, SlotKVCache
from glmaas.model.glm_tokenizer import SpecialIds

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Sequence:
    """One request inside the loop. Fields below `queue` belong to the loop thread."""

    request_id: str
    n_prompt: int  # the prompt's tokens, as the request gave them: usage's prompt tokens
    part_a: list[int]
    blanks: list[int]  # positions in part_a, filled in this order
    max_new: int  # tokens to sample at most, over all blanks, each blank's [E] included
    sampler: Sampler
    stops: tuple[str, ...]
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue
    slot: int = -1
    blank: int = 0  # the blank being filled
    pending: int = -1  # the next token to feed
    block: int = 1  # its block position (position inside the blank)
    n_generated: int = 0
    cancelled: bool = False  # set by the request's task; read by the loop
    finished: bool = False
    decoder: IncrementalDecoder = field(default_factory=IncrementalDecoder)
    matcher: StopMatcher = field(init=False)

    def __post_init__(self) -> None:
        self.matcher = StopMatcher(self.stops)


class GLMDecodeLoop(DecodeThread[Sequence]):
    """Owns a GLM, its slot cache and the thread that decodes all sequences; see module docstring."""

    def __init__(self, model: GLM, special: SpecialIds, token_bytes: list[bytes], slots: int) -> None:
        self.model = model
        self.max_len = model.config.max_seq_len
        self.special = special
        self._ends = (special.eop, special.eod)
        self._bytes = token_bytes
        self.slots = slots
        weight = next(model.parameters())
        self.cache = SlotKVCache(model.config, slots, self.max_len, dtype=weight.dtype, device=weight.device)
        self._device = weight.device
        # running[i] holds slot i (`_compact`).
        self._start_thread("glm-decode")

    def close(self) -> None:
        self._stop_thread()

    # -- the loop thread -------------------------------------------------------------------

    def _drop_cancelled(self) -> None:
        for seq in self._running:
            seq.finished = seq.finished or seq.cancelled
        super()._drop_cancelled()

    @torch.no_grad()
    def step(self) -> None:
        """Drop finished sequences, prefill waiting prompts into free slots, then feed one token
        of every sequence, sample and deliver each sequence's token."""
        self._compact()
        self._admit()
        running = self._running
        if not running:
            return
        tensor = lambda rows: torch.tensor(rows, dtype=torch.long, device=self._device)  # noqa: E731
        ids = tensor([[s.pending] for s in running])  # (B, 1)
        pos = tensor([[s.blanks[s.blank]] for s in running])  # (B, 1): the blank's place in Part A
        blk = tensor([[min(s.block, self.max_len)] for s in running])  # (B, 1)
        sep = tensor([len(s.part_a) for s in running])  # (B,)
        self.cache.start = 0
        logits, _ = self.model(ids, pos, blk, sep, kv_cache=self.cache)  # (B, 1, V)
        rows = logits[:, -1].float().cpu().numpy()
        lengths = self.cache.lengths
        deliveries: dict[asyncio.AbstractEventLoop, list] = {}
        for row, seq in enumerate(running):
            item: Delta | BaseException
            try:
                item = self._advance(seq, seq.sampler.sample(rows[row]), room=lengths[seq.slot] < self.max_len)
            except EngineError as exc:  # this sequence's fault only: the batch goes on
                seq.finished = True
                item = exc
            deliveries.setdefault(seq.loop, []).append((seq.queue, item))
        self._compact()
        for loop, items in deliveries.items():
            try:
                loop.call_soon_threadsafe(deliver, items)
            except RuntimeError:  # the request's event loop is gone: nobody is listening
                for seq in running:
                    seq.cancelled = seq.cancelled or seq.loop is loop

    def _admit(self) -> None:
        """Prefill Part A of waiting requests into free slots (one forward pass each)."""
        while self._waiting and len(self._running) < self.slots:
            seq = self._waiting.popleft()
            slot = len(self._running)
            part_a = torch.tensor([seq.part_a], dtype=torch.long, device=self._device)  # (1, T)
            positions = torch.arange(part_a.size(1), device=self._device)[None]  # (1, T)
            self.cache.start = slot
            self.cache.lengths[slot] = 0
            self.model(part_a, positions, torch.zeros_like(positions),
                       torch.tensor([part_a.size(1)], device=self._device), kv_cache=self.cache)
            seq.slot, seq.pending, seq.block = slot, self.special.sop, 1
            self._running.append(seq)

    def _advance(self, seq: Sequence, pick: Pick, room: bool) -> Delta:
        """Account one sampled token: its text, its logprobs, and whether its blank ends here (an
        `[E]`, a stop string) and whether the sequence does (its last blank ended, `max_tokens`
        reached, or no room left in the cache for the next token). `room`: the cache can take
        another token of this sequence."""
        token = pick.token
        seq.n_generated += 1
        blank = seq.blank
        text, hit = "", False
        logprobs: tuple[TokenLogprob, ...] | None = None if pick.logprob is None else ()
        if token in self._ends:  # counted, never reported as a logprob
            text = self._flush(seq)
            blank_done = True
        else:
            text, hit = seq.matcher.push(seq.decoder.push(self._bytes[token]))
            if logprobs is not None:
                logprobs = (self._token_logprob(pick),)
            if hit:  # the text after a stop string is dropped, and the blank ends
                seq.decoder, seq.matcher = IncrementalDecoder(), StopMatcher(seq.stops)
            blank_done = hit
        finish: FinishReason | None = None
        if blank_done:
            seq.blank += 1
            seq.pending, seq.block = self.special.sop, 1
            if seq.blank == len(seq.blanks):
                finish = "stop"
        else:
            seq.pending, seq.block = token, seq.block + 1
        if finish is None and (seq.n_generated >= seq.max_new or not room):
            finish = "length"
            text += self._flush(seq)
        if finish is None:
            return Delta((token,), text, logprobs=logprobs, blank=blank)
        seq.finished = True
        usage = Usage(seq.n_prompt, seq.n_generated)
        return Delta((token,), text, finish_reason=finish, usage=usage, logprobs=logprobs, blank=blank)

    @staticmethod
    def _flush(seq: Sequence) -> str:
        """What the decoder and the stop matcher still hold of the current blank; both start over."""
        tail, hit = seq.matcher.push(seq.decoder.flush())
        if not hit:
            tail += seq.matcher.flush()
        seq.decoder, seq.matcher = IncrementalDecoder(), StopMatcher(seq.stops)
        return tail

    def _token_logprob(self, pick: Pick) -> TokenLogprob:
        def text(token: int) -> str:
            return self._bytes[token].decode("utf-8", errors="replace")

        top = tuple((t, text(t), lp) for t, lp in pick.top)
        return TokenLogprob(pick.token, text(pick.token), float(pick.logprob or 0.0), top)

    def _compact(self) -> None:
        """Drop finished sequences; move the live ones down into the first slots, in order."""
        kept = [s for s in self._running if not s.finished]
        for slot, seq in enumerate(kept):
            if seq.slot != slot:  # slot < seq.slot: its old owner has left or moved down already
                self.cache.move(seq.slot, slot)
                seq.slot = slot
        self._running = kept

