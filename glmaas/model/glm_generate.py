"""Generation with GLM: fill every blank of Part A, left to right, with a KV cache.

Part A (the prompt, with `[MASK]`, `[sMASK]` or `[gMASK]` in it) is prefilled once with
bidirectional attention. Each blank is then generated as a Part B piece: `[S]` at the blank's
position with block position 1, then one token at a time until `[E]`. Earlier pieces stay in the
cache, so later blanks see them, as GLM was trained (Part B is causal across spans).
Left-to-right continuation is the special case `prompt [gMASK]`. Token ids in, token ids out.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from glmaas.model.glm import GLM, KVCache
from glmaas.model.glm_tokenizer import SpecialIds


@dataclass
class SamplingParams:
    max_new_tokens: int = 32  # per blank
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    seed: int | None = None


def logits_to_probs(logits: torch.Tensor, temperature: float = 1.0, top_p: float = 1.0) -> torch.Tensor:
    """(V,) logits -> (V,) probabilities after temperature and nucleus (top-p) filtering."""
    probs = torch.softmax(logits.float() / max(temperature, 1e-5), dim=-1)
    if top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        # keep the smallest prefix whose mass reaches top_p (the first token always stays)
        drop = torch.cumsum(sorted_probs, dim=-1) - sorted_probs >= top_p
        sorted_probs[drop] = 0.0
        probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
        probs = probs / probs.sum()
    return probs


def sample_token(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    if params.temperature <= 0:
        return int(torch.argmax(logits))
    probs = logits_to_probs(logits, params.temperature, params.top_p)
    return int(torch.multinomial(probs, 1, generator=generator))


def prefill(model: GLM, part_a: list[int], cache: KVCache) -> torch.Tensor:
    """Run Part A (bidirectional) into the cache; returns its (T, V) logits."""
    t = torch.tensor([part_a], dtype=torch.long)
    pos = torch.arange(len(part_a))[None]
    sep = torch.tensor([len(part_a)])
    logits, _ = model(t, pos, torch.zeros_like(pos), sep, kv_cache=cache)
    return logits[0]


def decode_one_token(model: GLM, token: int, position: int, block_position: int, sep: int, cache: KVCache) -> torch.Tensor:
    """Feed one Part B token; returns the (V,) logits for the next one."""
    t = torch.tensor([[token]])
    logits, _ = model(t, torch.tensor([[position]]), torch.tensor([[block_position]]), torch.tensor([sep]), kv_cache=cache)
    return logits[0, -1]


@torch.no_grad()
def fill_blanks(model: GLM, part_a: list[int], ids: SpecialIds, params: SamplingParams) -> list[list[int]]:
    """One generated piece (without `[S]`/`[E]`) per mask token in `part_a`, in order."""
    cfg = model.config
    blanks = [i for i, t in enumerate(part_a) if t in (ids.mask, ids.smask, ids.gmask)]
    if len(part_a) + len(blanks) > cfg.max_seq_len:
        raise ValueError(f"prompt of {len(part_a)} tokens leaves no room within {cfg.max_seq_len}")
    generator = None
    if params.seed is not None:
        generator = torch.Generator().manual_seed(params.seed)
    device = next(model.parameters()).device
    cache = KVCache(cfg, 1, cfg.max_seq_len, dtype=next(model.parameters()).dtype, device=device)
    model.eval()
    prefill(model, part_a, cache)
    sep = len(part_a)
    pieces: list[list[int]] = []
    for blank in blanks:
        piece: list[int] = []
        token, block = ids.sop, 1
        while len(piece) < params.max_new_tokens and cache.length < cfg.max_seq_len:
            logits = decode_one_token(model, token, blank, min(block, cfg.max_seq_len), sep, cache)
            token = sample_token(logits, params, generator)
            if token in (ids.eop, ids.eod):
                break
            piece.append(token)
            block += 1
        pieces.append(piece)
    return pieces
