"""Held-out evaluation during training: masked loss and accuracy on fixed batches."""

from __future__ import annotations

import numpy as np
import torch

from glmaas.training.data import TokenShards, get_batch

EVAL_SEED = 1_000_003  # eval batches never coincide with training batches (seed differs)


def to_tensors(batch: dict[str, np.ndarray], device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(v).to(device) for k, v in batch.items()}


def forward_batch(model, batch: dict[str, torch.Tensor]):
    return model(
        batch["input_ids"], batch["position_ids"], batch["block_position_ids"], batch["sep"],
        targets=batch["targets"], loss_mask=batch["loss_mask"],
    )  # fmt: skip


@torch.no_grad()
def evaluate(model, shards: TokenShards, objective, seq_len: int, pad_id: int, n_batches: int, batch_size: int, device="cpu") -> dict[str, float]:
    """Token-weighted loss and argmax accuracy over the loss positions of n_batches fixed batches."""
    was_training = model.training
    model.eval()
    nll = correct = count = 0.0
    for b in range(n_batches):
        batch = to_tensors(get_batch(shards, objective, seq_len, EVAL_SEED, b, range(batch_size), pad_id), device)
        logits, _ = forward_batch(model, batch)
        m = batch["loss_mask"].bool()
        logp = torch.log_softmax(logits.float(), dim=-1)
        tgt = batch["targets"]
        nll -= logp.gather(-1, tgt[..., None])[..., 0][m].sum().item()
        correct += (logits.argmax(-1) == tgt)[m].sum().item()
        count += m.sum().item()
    model.train(was_training)
    return {"loss": nll / max(count, 1), "acc": correct / max(count, 1)}
