"""LoRA (Hu et al., 2021): low-rank adapters on a frozen Decoder's linear layers.

A wrapped layer computes W x + b + (alpha / rank) * B A dropout(x), with A (rank, in) random and
B (out, rank) zero at the start, so a freshly wrapped model computes exactly what the base did.
Only A and B train. The wrapper is an nn.Linear that keeps the base `weight` and `bias` under
their own names, so the base parameters keep transformers' names and the adapters add
`....q_proj.lora_A` / `lora_B` beside them.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn
from torch.nn import functional as F

from glmaas.model.decoder import Decoder

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "gate_up_proj", "down_proj")


class LoRALinear(nn.Linear):
    """A frozen nn.Linear plus a trainable low-rank update."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0):
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.bias = base.bias
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        self.rank, self.alpha = rank, alpha
        self.scaling = alpha / rank
        w = base.weight
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, dtype=w.dtype, device=w.device))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, dtype=w.dtype, device=w.device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear and peft initialise A
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update = F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B)  # (..., out)
        return F.linear(x, self.weight, self.bias) + update * self.scaling

    def merged(self) -> nn.Linear:
        """A plain nn.Linear whose weight is W + scaling * B A."""
        out = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
        out = out.to(device=self.weight.device, dtype=self.weight.dtype)
        delta = (self.lora_B.float() @ self.lora_A.float()) * self.scaling
        with torch.no_grad():
            out.weight.copy_((self.weight.float() + delta).to(self.weight.dtype))
            if self.bias is not None:
                out.bias.copy_(self.bias)
        return out

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, rank={self.rank}, alpha={self.alpha}"


def _targets_in(model: nn.Module, targets: tuple[str, ...]):
    """(parent, attribute name) of every nn.Linear inside the layers whose name is a target."""
    for module in model.modules():
        for name, child in module.named_children():
            if name in targets and isinstance(child, nn.Linear) and not isinstance(child, LoRALinear):
                yield module, name, child


def apply_lora(
    model: Decoder,
    rank: int = 8,
    alpha: float = 16,
    dropout: float = 0.0,
    targets: tuple[str, ...] = DEFAULT_TARGETS,
) -> Decoder:
    """Freeze `model` and wrap its target linear layers with adapters, in place; returns it."""
    for p in model.parameters():
        p.requires_grad_(False)
    wrapped = 0
    for parent, name, linear in list(_targets_in(model.model, tuple(targets))):
        setattr(parent, name, LoRALinear(linear, rank, alpha, dropout))
        wrapped += 1
    if not wrapped:
        raise ValueError(f"no linear layer named any of {tuple(targets)}")
    return model


def _named_adapters(model: nn.Module) -> dict[str, nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if n.endswith((".lora_A", ".lora_B"))}


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The trainable adapter parameters (what an optimizer should get)."""
    return list(_named_adapters(model).values())


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapters alone, by full parameter name: a checkpoint of a LoRA run."""
    return {n: p.detach().clone() for n, p in _named_adapters(model).items()}


def load_lora_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy saved adapters into a model already wrapped with apply_lora (same rank and targets)."""
    own = _named_adapters(model)
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(f"LoRA state does not match the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
    with torch.no_grad():
        for name, tensor in state.items():
            own[name].copy_(tensor)


def merge_lora(model: Decoder) -> Decoder:
    """A copy of `model` with every adapter folded into its base weight: a plain Decoder."""
    merged = copy.deepcopy(model)
    for module in list(merged.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, LoRALinear):
                setattr(module, name, child.merged())
    for p in merged.parameters():
        p.requires_grad_(True)
    return merged
