"""Supervised fine-tuning of a decoder-family model (`glmaas.model.decoder`) on conversations:
LoRA by default, every weight when asked; AdamW; the loss on assistant tokens only.

One epoch visits every example once, in an order drawn from (seed, epoch); a step takes
`batch_size` examples padded on the right to the longest. Right padding needs no attention mask
under causal attention: real tokens never see the padding after them, and padded positions carry
no loss. Logits are computed only where a loss is taken (the assistant's tokens), which saves most
of the vocabulary-sized projection.

A checkpoint is written at the end of every epoch (the trained weights — the LoRA factors or the
whole model —, the optimizer, the step and the tokens trained); a run started again on the same
`out_dir` resumes from the last one, so a job killed mid-epoch repeats only that epoch, and its
count of trained tokens goes back to the checkpoint's (nothing is billed twice). The result is the
merged model exported to GGUF (F16), which llama.cpp serves.

Under `torchrun --nproc_per_node N` the same run is data-parallel (DDP, the path of
`glmaas.training.train`): each process takes its share of every step's examples, gradients are
averaged, rank 0 reports, evaluates and writes checkpoints.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from glmaas.model.decoder import Decoder
from glmaas.model.lora import apply_lora, load_lora_state_dict, lora_state_dict, merge_lora
from glmaas.model.weights import TokenizerInfo, export_gguf, load_gguf
from glmaas.training.chat_data import Example
from glmaas.training.finetune_config import FineTuneConfig, default_threads
from glmaas.training.train import _barrier, _setup_distributed, get_lr

CHECKPOINTS = "checkpoints"
RESULT = "model.gguf"
Report = Callable[[dict], None]


def epoch_order(n: int, epoch: int, seed: int) -> list[int]:
    """The order epoch `epoch` visits `n` examples in: a function of (seed, epoch) only."""
    order = list(range(n))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order


def steps_per_epoch(n: int, batch_size: int) -> int:
    return math.ceil(n / batch_size)


def collate(examples: list[Example], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids (B, T), right-padded, and targets (B, T): the next token where it is an
    assistant token, -100 elsewhere."""
    width = max(len(e) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    targets = torch.full((len(examples), width), -100, dtype=torch.long)
    for row, e in enumerate(examples):
        ids[row, : len(e)] = torch.tensor(e.ids)
        learn = torch.tensor(e.trained[1:], dtype=torch.bool)
        nxt = torch.tensor(e.ids[1:])
        targets[row, : len(e) - 1] = torch.where(learn, nxt, torch.tensor(-100))
    return ids, targets


class AssistantLoss(nn.Module):
    """The summed cross-entropy of a batch's assistant tokens; logits only where they are needed."""

    def __init__(self, model: Decoder) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        hidden, _ = self.model.hidden_states(ids)  # (B, T, C)
        where = targets != -100
        logits = self.model.lm_head(hidden[where])  # (N, vocab)
        return F.cross_entropy(logits.float(), targets[where], reduction="sum")


def assistant_tokens(examples: list[Example]) -> int:
    return sum(sum(e.trained[1:]) for e in examples)


@torch.no_grad()
def evaluate(model: Decoder, examples: list[Example], batch_size: int, pad_id: int, device: str) -> float:
    """Mean loss per assistant token over `examples`."""
    was_training = model.training
    model.eval()
    loss_fn = AssistantLoss(model)
    total, count = 0.0, 0
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        ids, targets = collate(chunk, pad_id)
        total += loss_fn(ids.to(device), targets.to(device)).item()
        count += assistant_tokens(chunk)
    model.train(was_training)
    return total / max(1, count)


def _checkpoint_path(out: Path, epoch: int) -> Path:
    return out / CHECKPOINTS / f"epoch-{epoch:03d}.pt"


def last_checkpoint(out_dir: str | Path) -> Path | None:
    """The checkpoint of the last finished epoch, if any."""
    found = sorted((Path(out_dir) / CHECKPOINTS).glob("epoch-*.pt"))
    return found[-1] if found else None


def _trained_state(model: Decoder, lora: bool) -> dict[str, torch.Tensor]:
    if lora:
        return lora_state_dict(model)
    return {k: v for k, v in model.state_dict().items()}


def _save(path: Path, state: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)  # a checkpoint is whole or absent


def load_base(cfg: FineTuneConfig, device: str) -> tuple[Decoder, TokenizerInfo]:
    """The base model (fp32) ready to train: LoRA factors added and the rest frozen, or every
    weight trainable."""
    model, tokenizer = load_gguf(cfg.base, dtype=torch.float32)
    model.to(device)
    if cfg.lora:
        apply_lora(model, rank=cfg.lora_rank, alpha=cfg.lora_alpha)
    else:
        model.requires_grad_(True)
    return model, tokenizer


def fine_tune(cfg: FineTuneConfig, train: list[Example], valid: list[Example], report: Report) -> Path:
    """Train (or resume) as configured and export the merged model; returns the GGUF path.
    `report` gets each event: `{"type": "message" | "metrics" | "checkpoint", ...}` (rank 0 only)."""
    torch.set_num_threads(cfg.threads or default_threads())
    rank, world, device = _setup_distributed(cfg.device)
    out = Path(cfg.out_dir)
    result = out / RESULT
    if result.exists():
        return result
    if cfg.batch_size < world:
        raise ValueError(f"batch_size {cfg.batch_size} is smaller than the {world} processes")
    say = report if rank == 0 else (lambda _event: None)
    torch.manual_seed(cfg.seed)
    model, tokenizer = load_base(cfg, device)
    pad_id = tokenizer.eos_token_id or 0
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=0.0)
    per_epoch = steps_per_epoch(len(train), cfg.batch_size)
    total_steps = per_epoch * cfg.n_epochs
    warmup = min(10, max(1, total_steps // 10))
    step, first_epoch, trained_tokens = 0, 0, 0
    resume = last_checkpoint(out)
    if resume is not None:
        state = torch.load(resume, map_location=device, weights_only=True)
        if cfg.lora:
            load_lora_state_dict(model, state["trained"])
        else:
            model.load_state_dict(state["trained"])
        optimizer.load_state_dict(state["optimizer"])
        step, first_epoch, trained_tokens = state["step"], state["epoch"] + 1, state["trained_tokens"]
        say({"type": "message", "message": f"Resumed from the checkpoint of epoch {state['epoch'] + 1} "
                                           f"(step {step})."})
    else:
        say({"type": "message", "message": f"Fine-tuning {'LoRA' if cfg.lora else 'every weight'} on "
                                           f"{len(train)} conversations: {total_steps} steps."})
    loss_fn = AssistantLoss(model)
    trainer = torch.nn.parallel.DistributedDataParallel(loss_fn) if world > 1 else loss_fn
    model.train()
    for epoch in range(first_epoch, cfg.n_epochs):
        order = epoch_order(len(train), epoch, cfg.seed)
        losses: list[float] = []
        for first in range(0, len(order), cfg.batch_size):
            t0 = time.perf_counter()
            batch = [train[i] for i in order[first:first + cfg.batch_size]]
            lr = get_lr(step, cfg.learning_rate, warmup, total_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            ids, targets = collate(batch[rank::world], pad_id)
            n_loss = max(1, assistant_tokens(batch))
            # DDP averages gradients over processes: scale so the result is the mean over the batch.
            loss = trainer(ids.to(device), targets.to(device)) * (world / n_loss)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step_loss = loss.item() / world
            if world > 1:
                t = torch.tensor([step_loss], device=device)
                torch.distributed.all_reduce(t)
                step_loss = t.item()
            losses.append(step_loss)
            step += 1
            tokens = sum(len(e) for e in batch)
            trained_tokens += tokens
            say({"type": "metrics", "step": step, "total_steps": total_steps, "epoch": epoch + 1,
                 "train_loss": round(step_loss, 4), "learning_rate": lr, "trained_tokens": trained_tokens,
                 "tokens_per_s": round(tokens / max(time.perf_counter() - t0, 1e-9), 1)})
        valid_loss = evaluate(model, valid, cfg.batch_size, pad_id, device) if valid and rank == 0 else None
        if rank == 0:
            _save(_checkpoint_path(out, epoch), {
                "epoch": epoch, "step": step, "trained_tokens": trained_tokens,
                "trained": _trained_state(model, cfg.lora), "optimizer": optimizer.state_dict()})
            say({"type": "checkpoint", "epoch": epoch + 1, "step": step, "trained_tokens": trained_tokens,
                 "train_loss": round(sum(losses) / len(losses), 4),
                 "valid_loss": None if valid_loss is None else round(valid_loss, 4)})
        _barrier(world)
    if rank == 0:
        if cfg.lora:
            model = merge_lora(model)
        tmp = out / (RESULT + ".tmp")
        export_gguf(model, tokenizer, tmp, "f16")
        tmp.replace(result)
        (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
        say({"type": "message", "message": "Exported the fine-tuned model to GGUF (F16)."})
    _barrier(world)
    return result
