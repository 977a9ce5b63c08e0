"""The decoder family glmaas serves and fine-tunes: Llama (SmolLM2) and GLM-4, in one file.

Both are pre-norm decoder-only transformers with RMSNorm, a gated SiLU MLP, rotary positions and
grouped-query attention. What tells the families apart is small and lives in the config:

| family  | transformers class | rotary                                   | biases     | MLP            | extra norms |
|---------|--------------------|------------------------------------------|------------|----------------|-------------|
| `llama` | LlamaForCausalLM   | all of head_dim, halves rotated          | all or none| gate, up, down | —           |
| `glm`   | GlmForCausalLM     | first partial_rotary_factor of head_dim, | q, k, v    | fused gate_up  | —           |
|         |                    | interleaved pairs (x0,x1), (x2,x3), ...  |            | (gate first)   |             |
| `glm4`  | Glm4ForCausalLM    | as `glm`                                 | as `glm`   | as `glm`       | post-attention and post-MLP |

Parameter names are transformers' own (`model.layers.0.self_attn.q_proj.weight`, ...), so a
Hugging Face state dict loads with `strict=True`. Not supported: rope scaling (long-context
variants), sliding-window attention, mixture-of-experts layers, MLP biases.

Layout follows nanoGPT's model.py: the config first, then the modules in the order the forward
pass uses them. The model knows nothing about tokenization: token ids in, logits out.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F

FAMILIES = ("llama", "glm", "glm4")

# transformers' `model_type` -> our family.
HF_MODEL_TYPES = {"llama": "llama", "glm": "glm", "glm4": "glm4"}


@dataclass
class DecoderConfig:
    # Defaults: SmolLM2-135M's shape.
    family: str = "llama"
    vocab_size: int = 49152
    hidden_size: int = 576
    intermediate_size: int = 1536
    num_layers: int = 30
    num_heads: int = 9
    num_kv_heads: int = 3
    head_dim: int = 64
    rope_theta: float = 10000.0
    partial_rotary_factor: float = 1.0  # the share of head_dim that rotates (GLM-4: 0.5)
    rope_interleaved: bool | None = None  # None: the family's own (GLM: interleaved pairs)
    rms_norm_eps: float = 1e-5
    attention_bias: bool = False  # Llama: q, k, v and o; GLM: q, k, v only
    tie_word_embeddings: bool = True
    max_position_embeddings: int = 2048
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"unknown decoder family {self.family!r}; choose from {FAMILIES}")
        if self.rope_interleaved is None:
            self.rope_interleaved = self.family in ("glm", "glm4")
        if self.num_heads % self.num_kv_heads:
            raise ValueError("num_heads must be a multiple of num_kv_heads")

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.partial_rotary_factor)

    @classmethod
    def from_hf_config(cls, hf: dict) -> "DecoderConfig":
        """Our config from a transformers config.json (LlamaConfig, GlmConfig or Glm4Config)."""
        model_type = hf.get("model_type")
        if model_type not in HF_MODEL_TYPES:
            raise ValueError(f"unsupported model_type {model_type!r}; supported: {sorted(HF_MODEL_TYPES)}")
        family = HF_MODEL_TYPES[model_type]
        # transformers 5 gathers the rotary settings under rope_parameters; 4.x kept them top-level.
        rope = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type != "default":
            raise ValueError(f"rope scaling {rope_type!r} is not supported")
        if hf.get("mlp_bias"):
            raise ValueError("MLP biases are not supported")
        num_heads = hf["num_attention_heads"]
        head_dim = hf.get("head_dim") or hf["hidden_size"] // num_heads
        default_partial = 0.5 if family != "llama" else 1.0
        return cls(
            family=family,
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            intermediate_size=hf["intermediate_size"],
            num_layers=hf["num_hidden_layers"],
            num_heads=num_heads,
            num_kv_heads=hf.get("num_key_value_heads") or num_heads,
            head_dim=head_dim,
            rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
            partial_rotary_factor=float(
                rope.get("partial_rotary_factor", hf.get("partial_rotary_factor", default_partial))
            ),
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-5)),
            attention_bias=bool(hf.get("attention_bias", family != "llama")),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", family == "llama")),
            max_position_embeddings=hf.get("max_position_embeddings", 2048),
            bos_token_id=hf.get("bos_token_id"),
            eos_token_id=hf.get("eos_token_id"),
            pad_token_id=hf.get("pad_token_id"),
        )

    def to_hf_config(self) -> dict:
        """A transformers config.json for this model (the inverse of from_hf_config)."""
        arch = {"llama": "LlamaForCausalLM", "glm": "GlmForCausalLM", "glm4": "Glm4ForCausalLM"}[self.family]
        return {
            "architectures": [arch],
            "model_type": self.family,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rope_theta": self.rope_theta,
            "partial_rotary_factor": self.partial_rotary_factor,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": self.rope_theta,
                "partial_rotary_factor": self.partial_rotary_factor,
            },
            "rms_norm_eps": self.rms_norm_eps,
            "attention_bias": self.attention_bias,
            "tie_word_embeddings": self.tie_word_embeddings,
            "max_position_embeddings": self.max_position_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "pad_token_id": self.pad_token_id,
        }


# A past: per layer, the keys and values so far, each (B, n_kv, S, hd).
Past = list[tuple[torch.Tensor, torch.Tensor]]


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalised in float32 and cast back before the weight, as transformers does, so low
        # precision training sees the same numbers.
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


class Rotary(nn.Module):
    """Rotary position embedding over the first `rotary_dim` channels of each head.

    Half-split (Llama): channel i pairs with i + rotary_dim/2. Interleaved (GLM): channel 2i
    pairs with 2i+1. Pair i turns by position * theta^(-2i/rotary_dim).
    """

    def __init__(self, config: DecoderConfig):
        super().__init__()
        self.rotary_dim = config.rotary_dim
        self.interleaved = config.rope_interleaved
        self.theta = config.rope_theta

    def angles(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin, each (B, 1, T, rotary_dim/2), for (B, T) positions.

        Always in float32, also in a bf16 model: a buffer would be cast with the weights.
        """
        exponents = torch.arange(0, self.rotary_dim, 2, device=position_ids.device).float() / self.rotary_dim
        inv_freq = 1.0 / (self.theta**exponents)  # (rd/2,)
        freqs = position_ids[:, None, :, None].float() * inv_freq  # (B, 1, T, rd/2)
        return freqs.cos(), freqs.sin()

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        # x: (B, nh, T, hd)
        rd = self.rotary_dim
        partial = rd < x.size(-1)
        rot, rest = (x[..., :rd], x[..., rd:]) if partial else (x, None)
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        if self.interleaved:
            x1, x2 = rot[..., 0::2], rot[..., 1::2]
            rot = torch.stack((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).flatten(-2)
        else:
            x1, x2 = rot[..., : rd // 2], rot[..., rd // 2 :]
            rot = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
        return torch.cat((rot, rest), dim=-1) if partial else rot


class Attention(nn.Module):
    def __init__(self, config: DecoderConfig):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = config.num_heads, config.num_kv_heads, config.head_dim
        q_dim, kv_dim = config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim
        bias = config.attention_bias
        self.q_proj = nn.Linear(config.hidden_size, q_dim, bias=bias)
        self.k_proj = nn.Linear(config.hidden_size, kv_dim, bias=bias)
        self.v_proj = nn.Linear(config.hidden_size, kv_dim, bias=bias)
        # GLM biases q, k and v only; Llama's attention_bias covers the output too.
        self.o_proj = nn.Linear(q_dim, config.hidden_size, bias=bias and config.family == "llama")

    def forward(
        self,
        x: torch.Tensor,  # (B, T, C)
        rotary: Rotary,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None,  # (B, 1, T, S) bool, True = may attend; None = plain causal
        past: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        B, T, _ = x.size()
        q = self.q_proj(x).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)  # (B, nh, T, hd)
        k = self.k_proj(x).view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)  # (B, nkv, T, hd)
        v = self.v_proj(x).view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)  # (B, nkv, T, hd)
        q, k = rotary(q, cos, sin), rotary(k, cos, sin)
        if past is not None:
            k, v = torch.cat((past[0], k), dim=2), torch.cat((past[1], v), dim=2)  # (B, nkv, S, hd)
        present = (k, v)
        causal = mask is None and past is None and T > 1
        # Grouped-query attention: each kv head serves num_heads / num_kv_heads query heads,
        # without copying k and v out to every query head.
        gqa = self.num_heads != self.num_kv_heads
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=gqa)  # (B, nh, T, hd)
        y = y.transpose(1, 2).reshape(B, T, self.num_heads * self.head_dim)
        return self.o_proj(y), present


class MLP(nn.Module):
    """Gated SiLU: down(silu(gate(x)) * up(x)). GLM fuses gate and up into one matrix, gate first."""

    def __init__(self, config: DecoderConfig):
        super().__init__()
        self.fused = config.family != "llama"
        if self.fused:
            self.gate_up_proj = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        else:
            self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
            self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused:
            gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        else:
            gate, up = self.gate_proj(x), self.up_proj(x)
        return self.down_proj(F.silu(gate) * up)


class Layer(nn.Module):
    """x + Attn(norm(x)), then x + MLP(norm(x)); GLM-4-0414 also norms each branch's output."""

    def __init__(self, config: DecoderConfig):
        super().__init__()
        self.sandwich = config.family == "glm4"
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config)
        if self.sandwich:
            self.post_self_attn_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        # transformers' name for the norm before the MLP.
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)
        if self.sandwich:
            self.post_mlp_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x, rotary, cos, sin, mask, past):
        h, present = self.self_attn(self.input_layernorm(x), rotary, cos, sin, mask, past)
        if self.sandwich:
            h = self.post_self_attn_layernorm(h)
        x = x + h
        h = self.mlp(self.post_attention_layernorm(x))
        if self.sandwich:
            h = self.post_mlp_layernorm(h)
        return x + h, present


class Trunk(nn.Module):
    """Embeddings, layers and the final norm: transformers' `model.` prefix."""

    def __init__(self, config: DecoderConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList([Layer(config) for _ in range(config.num_layers)])
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = Rotary(config)


class Decoder(nn.Module):
    def __init__(self, config: DecoderConfig):
        super().__init__()
        self.config = config
        self.model = Trunk(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.apply(self._init_weights)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def hidden_states(
        self,
        input_ids: torch.Tensor,  # (B, T)
        attention_mask: torch.Tensor | None = None,  # (B, S) 1 = token, 0 = padding; S = past + T
        past: Past | None = None,
    ) -> tuple[torch.Tensor, Past]:
        """The final-norm hidden states (B, T, C) and the extended past; no output head.

        A training loop that needs logits only at some positions (the assistant's turns) can
        project just those through `lm_head`, which saves most of the vocabulary-sized work.
        A right-padded training batch needs no attention_mask: causal attention already keeps
        every real token from seeing the padding after it, and without a mask SDPA takes its
        fused causal kernel.
        """
        B, T = input_ids.size()
        offset = past[0][0].size(2) if past else 0
        S = offset + T
        device = input_ids.device
        if attention_mask is None:
            position_ids = torch.arange(offset, S, device=device).expand(B, T)
            mask = None
            if past and T > 1:  # a chunk after a past: causal within, sees all the past
                mask = _allowed(torch.ones(B, S, dtype=torch.bool, device=device), offset, T)
        else:
            # Positions count real tokens only, so left padding (batched prompts) shifts nothing.
            keep = attention_mask.bool()
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, offset:]
            mask = _allowed(keep, offset, T)
        m = self.model
        x = m.embed_tokens(input_ids)  # (B, T, C)
        cos, sin = m.rotary_emb.angles(position_ids)
        presents = []
        for i, layer in enumerate(m.layers):
            x, present = layer(x, m.rotary_emb, cos, sin, mask, past[i] if past else None)
            presents.append(present)
        return m.norm(x), presents

    def forward(
        self,
        input_ids: torch.Tensor,  # (B, T)
        attention_mask: torch.Tensor | None = None,  # (B, S)
        past: Past | None = None,
    ) -> tuple[torch.Tensor, Past]:
        """Logits (B, T, vocab) and the past extended by these T tokens."""
        h, past = self.hidden_states(input_ids, attention_mask, past)
        return self.lm_head(h), past

    @torch.no_grad()
    def generate_greedy(
        self,
        ids: torch.Tensor | list[int],  # (B, T) or one prompt's ids
        max_new_tokens: int,
        stop_ids: list[int] | None = None,
        attention_mask: torch.Tensor | None = None,  # (B, T), 0 on left padding of shorter prompts
    ) -> torch.Tensor:
        """The greedy continuation (B, N) of each prompt, N <= max_new_tokens, with a KV cache.

        Stops early once every row has produced one of `stop_ids` (kept in the output; rows that
        stopped earlier repeat their stop token).
        """
        if not isinstance(ids, torch.Tensor):
            ids = torch.tensor([ids], dtype=torch.long)
        ids = ids.to(self.lm_head.weight.device)
        stop = torch.tensor(stop_ids or [], dtype=torch.long, device=ids.device)
        done = torch.zeros(ids.size(0), dtype=torch.bool, device=ids.device)
        out: list[torch.Tensor] = []
        logits, past = self(ids, attention_mask=attention_mask)
        for _ in range(max_new_tokens):
            nxt = logits[:, -1].argmax(-1)  # (B,)
            if out:
                nxt = torch.where(done, out[-1], nxt)
            out.append(nxt)
            done |= torch.isin(nxt, stop)
            if done.all() or len(out) == max_new_tokens:
                break
            if attention_mask is not None:
                attention_mask = torch.cat((attention_mask, attention_mask.new_ones(ids.size(0), 1)), dim=1)
            logits, past = self(nxt[:, None], attention_mask=attention_mask, past=past)
        return torch.stack(out, dim=1) if out else ids.new_zeros(ids.size(0), 0)


def left_pad(prompts: list[list[int]], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts of different lengths as one (B, T) batch padded on the left, and its mask."""
    T = max(len(p) for p in prompts)
    ids = torch.tensor([[pad_id] * (T - len(p)) + list(p) for p in prompts], dtype=torch.long)
    mask = torch.tensor([[0] * (T - len(p)) + [1] * len(p) for p in prompts], dtype=torch.long)
    return ids, mask


def _allowed(keep: torch.Tensor, offset: int, T: int) -> torch.Tensor:
    """(B, 1, T, S) bool: query offset+i sees key j when j <= offset+i and key j is not padding.

    Each query also sees itself, so a padding row never has an empty softmax (its output is
    never used).
    """
    S = keep.size(1)
    q_pos = torch.arange(offset, offset + T, device=keep.device)[:, None]  # (T, 1)
    k_pos = torch.arange(S, device=keep.device)[None, :]  # (1, S)
    allowed = (k_pos <= q_pos)[None] & keep[:, None, :]  # (B, T, S)
    return (allowed | (k_pos == q_pos)[None])[:, None]
