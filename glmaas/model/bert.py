"""A BERT encoder and the sentence embedding on top of it, read from a sentence-transformers folder.

This is what all-MiniLM-L6-v2 is: a 6-layer BERT (post-LayerNorm blocks, GELU, learned absolute
positions), whose token states are mean-pooled over the real (unpadded) tokens and scaled to unit
length. The weights are read from `model.safetensors` as Hugging Face's `BertModel` names them;
nothing here needs `transformers`.

    token ids (B, T) ─► embed ─► N × block ─► mean over unpadded tokens ─► L2 normalise ─► (B, C)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass(frozen=True)
class BertConfig:
    vocab_size: int = 30522
    max_positions: int = 512
    type_vocab_size: int = 2
    n_layer: int = 6
    n_head: int = 12
    n_embd: int = 384
    n_inner: int = 1536
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0

    @classmethod
    def from_hf(cls, config: dict) -> BertConfig:
        """From a Hugging Face `config.json` of a BERT model."""
        if config.get("hidden_act", "gelu") != "gelu":
            raise ValueError(f"unsupported activation {config['hidden_act']!r}")
        if config.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"unsupported position embedding {config['position_embedding_type']!r}")
        return cls(vocab_size=config["vocab_size"], max_positions=config["max_position_embeddings"],
                   type_vocab_size=config.get("type_vocab_size", 2), n_layer=config["num_hidden_layers"],
                   n_head=config["num_attention_heads"], n_embd=config["hidden_size"],
                   n_inner=config["intermediate_size"], layer_norm_eps=config.get("layer_norm_eps", 1e-12),
                   pad_token_id=config.get("pad_token_id", 0))


class Embeddings(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.tok = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.pos = nn.Embedding(cfg.max_positions, cfg.n_embd)
        self.typ = nn.Embedding(cfg.type_vocab_size, cfg.n_embd)
        self.ln = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        T = ids.size(1)
        positions = torch.arange(T, device=ids.device)
        # One segment: every token has type 0.
        return self.ln(self.tok(ids) + self.pos(positions) + self.typ.weight[0])  # (B, T, C)


class Block(nn.Module):
    """Self-attention then a feed-forward layer, each added to its input and then normalised
    (post-LN, as in the original BERT)."""

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.n_head = cfg.n_head
        self.q = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.k = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.v = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.ln_attn = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps)
        self.fc_in = nn.Linear(cfg.n_embd, cfg.n_inner)
        self.fc_out = nn.Linear(cfg.n_inner, cfg.n_embd)
        self.ln_ffn = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        hs = C // self.n_head

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)

        # keep: (B, 1, 1, T), true where the key is a real token; padding is never attended to.
        y = F.scaled_dot_product_attention(heads(self.q(x)), heads(self.k(x)), heads(self.v(x)), attn_mask=keep)
        y = y.transpose(1, 2).reshape(B, T, C)
        x = self.ln_attn(x + self.proj(y))
        return self.ln_ffn(x + self.fc_out(F.gelu(self.fc_in(x))))


class Bert(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = Embeddings(cfg)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Token states (B, T, C) of `ids` (B, T); `mask` (B, T) is 1 on real tokens, 0 on padding."""
        keep = mask.bool()[:, None, None, :]  # (B, 1, 1, T)
        x = self.embed(ids)
        for block in self.blocks:
            x = block(x, keep)
        return x


def mean_pool(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The mean of each row's unpadded token states: (B, T, C), (B, T) → (B, C)."""
    m = mask.unsqueeze(-1).to(states.dtype)
    return (states * m).sum(1) / m.sum(1).clamp(min=1e-9)


@torch.inference_mode()
def sentence_embeddings(model: Bert, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Unit-length sentence vectors (B, C) of a padded batch of token ids."""
    return F.normalize(mean_pool(model(ids, mask), mask), p=2, dim=1)


# Hugging Face BertModel names → ours: the embeddings, then per layer.
_EMBED_NAMES = {
    "embeddings.word_embeddings.weight": "embed.tok.weight",
    "embeddings.position_embeddings.weight": "embed.pos.weight",
    "embeddings.token_type_embeddings.weight": "embed.typ.weight",
    "embeddings.LayerNorm.weight": "embed.ln.weight",
    "embeddings.LayerNorm.bias": "embed.ln.bias",
}
_BLOCK_NAMES = {
    "attention.self.query": "q",
    "attention.self.key": "k",
    "attention.self.value": "v",
    "attention.output.dense": "proj",
    "attention.output.LayerNorm": "ln_attn",
    "intermediate.dense": "fc_in",
    "output.dense": "fc_out",
    "output.LayerNorm": "ln_ffn",
}


def _our_name(hf_name: str) -> str | None:
    if hf_name in _EMBED_NAMES:
        return _EMBED_NAMES[hf_name]
    if not hf_name.startswith("encoder.layer."):
        return None  # position_ids, the pooler: not used by a sentence encoder
    index, _, rest = hf_name.removeprefix("encoder.layer.").partition(".")
    module, _, param = rest.rpartition(".")
    return f"blocks.{index}.{_BLOCK_NAMES[module]}.{param}"


def load_bert(folder: Path) -> Bert:
    """The BERT of a sentence-transformers (or Hugging Face) model folder, in eval mode."""
    from safetensors.torch import load_file

    cfg = BertConfig.from_hf(json.loads((folder / "config.json").read_text()))
    weights = {}
    for hf_name, tensor in load_file(folder / "model.safetensors").items():
        name = _our_name(hf_name.removeprefix("bert."))
        if name is not None:
            weights[name] = tensor.float()
    model = Bert(cfg)
    model.load_state_dict(weights, strict=True)
    return model.eval()
