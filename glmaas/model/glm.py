"""GLM: the General Language Model (Du et al., ACL 2022), in one file.

One transformer stack reads Part A (the corrupted text, bidirectional) and Part B (the blanks,
generated left to right) together; only the attention mask and the 2D positions tell them apart.
See ../shared/reference/glm.md §1.1–1.5. Layout follows nanoGPT's model.py: the config first,
then the modules in the order the forward pass uses them.

The model knows nothing about tokenization or objectives: it maps token ids, position ids,
block position ids and `sep` (the length of Part A) to logits.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F


@dataclass
class GLMConfig:
    vocab_size: int = 4096
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 192
    max_seq_len: int = 128  # position tables hold max_seq_len + 1 rows, as in THUDM/GLM
    dropout: float = 0.0  # the paper uses 0.1; tiny short runs learn faster without it
    bias: bool = True

    @classmethod
    def from_name(cls, name: str, **overrides) -> "GLMConfig":
        """A named preset, with any field overridden (e.g. vocab_size from the tokenizer)."""
        if name not in PRESETS:
            raise ValueError(f"unknown GLM preset {name!r}; choose from {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    def to_dict(self) -> dict:
        return asdict(self)


# Named presets. glm-base matches GLM-Base's stack (12 x 768, 12 heads) at a small vocabulary.
PRESETS: dict[str, dict] = {
    "glm-micro": dict(n_layer=2, n_head=2, n_embd=64, max_seq_len=128),  # for tests
    "glm-mini": dict(n_layer=4, n_head=4, n_embd=128, max_seq_len=128),  # ~1M params @ 2k vocab
    "glm-tiny": dict(n_layer=4, n_head=4, n_embd=192, max_seq_len=128),  # ~2.6M params @ 4k vocab
    "glm-small": dict(n_layer=6, n_head=6, n_embd=384, max_seq_len=256),  # ~12M params @ 4k vocab
    "glm-base": dict(n_layer=12, n_head=12, n_embd=768, max_seq_len=512),
}


def build_attention_mask(sep: torch.Tensor, q_len: int, k_len: int, offset: int = 0) -> torch.Tensor:
    """The GLM mask (glm.md §1.4) as a bool tensor (B, 1, q_len, k_len); True = may attend.

    Query i (absolute position offset + i) sees key j when j <= offset + i (causal) or j < sep
    (all of Part A). So Part A is bidirectional, Part B is causal and sees all of Part A.
    sep = 0 gives a causal LM; sep = length gives full bidirectional attention (MLM).
    """
    q_pos = torch.arange(offset, offset + q_len, device=sep.device)[:, None]  # (q, 1)
    k_pos = torch.arange(k_len, device=sep.device)[None, :]  # (1, k)
    causal = k_pos <= q_pos  # (q, k)
    part_a = k_pos[None] < sep.view(-1, 1, 1)  # (B, 1, k)
    return (causal[None] | part_a)[:, None]  # (B, 1, q, k)


class KVCache(nn.Module):
    """Keys and values of every layer for up to max_len positions; `length` are filled, the same
    number in every row of the batch."""

    def __init__(self, config: GLMConfig, batch_size: int, max_len: int, dtype=torch.float32, device=None):
        super().__init__()
        hs = config.n_embd // config.n_head
        shape = (config.n_layer, batch_size, config.n_head, max_len, hs)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.length = 0

    def attention_mask(self, sep: torch.Tensor, q_len: int) -> torch.Tensor:
        """The GLM mask of `q_len` new positions after those cached: (B, 1, q_len, length + q_len)."""
        return build_attention_mask(sep, q_len, self.length + q_len, self.length)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this step's (B, nh, T, hs) keys/values for `layer`; return all so far."""
        t = k.size(2)
        self.k[layer, :, :, self.length : self.length + t] = k
        self.v[layer, :, :, self.length : self.length + t] = v
        end = self.length + t
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def advance(self, q_len: int, batch: int) -> None:
        self.length += q_len  # every row alike


class SlotKVCache(nn.Module):
    """Keys and values of `slots` sequences, each with its own length (a ragged batch).

    A forward pass works on the slots `start .. start + B`: one sequence's prompt (B = 1, T = its
    length) or one token of each of B sequences (T = 1), each written at its own length. Keys past
    a row's length hold stale values that its mask hides. `move` copies a slot onto another, so a
    caller can keep its live sequences in the first slots and every decode step one slice.
    """

    def __init__(self, config: GLMConfig, slots: int, max_len: int, dtype=torch.float32, device=None):
        super().__init__()
        hs = config.n_embd // config.n_head
        shape = (config.n_layer, slots, config.n_head, max_len, hs)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.lengths = [0] * slots  # filled positions per slot
        self.start = 0  # the first slot of the next forward pass
        self._write: tuple | None = None  # where this pass writes: set by attention_mask, per pass

    def attention_mask(self, sep: torch.Tensor, q_len: int) -> torch.Tensor:
        """(B, 1, q_len, S): query i of row b (at position lengths[b] + i) sees key j when
        j <= lengths[b] + i or j < sep[b]; S covers the longest row. Called once per pass, first."""
        B, device = sep.size(0), sep.device
        offsets = self.lengths[self.start : self.start + B]
        end = max(offsets) + q_len
        rows = slice(self.start, self.start + B)
        if len(set(offsets)) == 1:  # every row at the same length: slices, not scattered writes
            self._write = (rows, rows, slice(offsets[0], offsets[0] + q_len), end)
        else:
            assert q_len == 1, "rows of different lengths take one token each"
            slots = torch.arange(self.start, self.start + B, device=device)
            self._write = (rows, slots, torch.tensor(offsets, device=device), end)
        at = torch.tensor(offsets, device=device)
        q_pos = at[:, None] + torch.arange(q_len, device=device)[None]  # (B, q)
        k_pos = torch.arange(end, device=device)  # (S,)
        visible = (k_pos[None, None] <= q_pos[:, :, None]) | (k_pos[None, None] < sep.view(-1, 1, 1))
        return visible[:, None]  # (B, 1, q, S)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store (B, nh, T, hs) keys/values of the rows at their own lengths; return (B, nh, S, hs)."""
        assert self._write is not None
        rows, write_rows, write_at, end = self._write
        if isinstance(write_at, slice):
            self.k[layer, write_rows, :, write_at] = k
            self.v[layer, write_rows, :, write_at] = v
        else:  # one token per row, each at its own position
            self.k[layer, write_rows, :, write_at] = k[:, :, 0]
            self.v[layer, write_rows, :, write_at] = v[:, :, 0]
        return self.k[layer, rows, :, :end], self.v[layer, rows, :, :end]

    def advance(self, q_len: int, batch: int) -> None:
        for slot in range(self.start, self.start + batch):
            self.lengths[slot] += q_len
        self._write = None

    def move(self, src: int, dst: int) -> None:
        """Slot `src`'s keys, values and length, copied onto slot `dst`."""
        n = self.lengths[src]
        self.k[:, dst, :, :n] = self.k[:, src, :, :n]
        self.v[:, dst, :, :n] = self.v[:, src, :, :n]
        self.lengths[dst] = n


class SelfAttention(nn.Module):
    def __init__(self, config: GLMConfig, layer: int):
        super().__init__()
        assert config.n_embd % config.n_head == 0
        self.layer = layer
        self.n_head = config.n_head
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, kv_cache: KVCache | SlotKVCache | None) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        if kv_cache is not None:
            k, v = kv_cache.update(self.layer, k, v)  # (B, nh, S, hs), S = cached + T
        dropout_p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GLMConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # GeLU with the tanh approximation, as THUDM/GLM's gelu_impl.
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))


class Block(nn.Module):
    """Pre-LN Megatron layer: x + Attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, config: GLMConfig, layer: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = SelfAttention(config, layer)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, kv_cache: KVCache | SlotKVCache | None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), mask, kv_cache)
        x = x + self.mlp(self.ln_2(x))
        return x


class GLM(nn.Module):
    def __init__(self, config: GLMConfig):
        super().__init__()
        self.config = config
        n_pos = config.max_seq_len + 1
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),
                wpe=nn.Embedding(n_pos, config.n_embd),  # position in the corrupted text
                wbe=nn.Embedding(n_pos, config.n_embd),  # position inside a blank (0 in Part A)
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList([Block(config, i) for i in range(config.n_layer)]),
                ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
            )
        )
        self.apply(self._init_weights)
        # Scaled init of the residual projections (GPT-2 / Megatron): keeps the residual stream's
        # variance from growing with depth.
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            t = self.transformer
            n -= t.wte.weight.numel() + t.wpe.weight.numel() + t.wbe.weight.numel()
        return n

    def forward(
        self,
        input_ids: torch.Tensor,  # (B, T)
        position_ids: torch.Tensor,  # (B, T)
        block_position_ids: torch.Tensor,  # (B, T)
        sep: torch.Tensor,  # (B,) length of Part A
        targets: torch.Tensor | None = None,  # (B, T), aligned with input_ids (not shifted)
        loss_mask: torch.Tensor | None = None,  # (B, T), 1 where the loss counts
        kv_cache: KVCache | SlotKVCache | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        B, T = input_ids.size()
        t = self.transformer
        if kv_cache is None:
            mask = build_attention_mask(sep, T, T)  # (B, 1, T, T)
        else:
            mask = kv_cache.attention_mask(sep, T)  # (B, 1, T, S)
        x = t.wte(input_ids) + t.wpe(position_ids) + t.wbe(block_position_ids)  # (B, T, C)
        x = t.drop(x)
        for block in t.h:
            x = block(x, mask, kv_cache)
        if kv_cache is not None:
            kv_cache.advance(T, B)
        x = t.ln_f(x)
        logits = F.linear(x, t.wte.weight)  # (B, T, vocab): output layer tied to the embedding
        loss = None
        if targets is not None:
            loss = masked_cross_entropy(logits, targets, loss_mask)
        return logits, loss

    def configure_optimizer(self, lr: float, weight_decay: float, betas=(0.9, 0.98), eps=1e-6):
        """AdamW; LayerNorm weights and biases take no weight decay (as THUDM/GLM)."""
        decay = [p for p in self.parameters() if p.dim() >= 2]
        no_decay = [p for p in self.parameters() if p.dim() < 2]
        groups = [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps)


def masked_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, loss_mask: torch.Tensor | None) -> torch.Tensor:
    """sum(CE * loss_mask) / sum(loss_mask), as pretrain_glm.py's forward_step."""
    ce = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none")
    if loss_mask is None:
        return ce.mean()
    m = loss_mask.flatten().to(ce.dtype)
    return (ce * m).sum() / m.sum().clamp(min=1.0)
