"""The training loop: AdamW, warmup + cosine, clipping, accumulation, bf16, DDP, exact resume.

Run it single-process, or under `torchrun --nproc_per_node N` (DDP: gloo on CPU, NCCL on GPU).
The global batch is micro_batch x grad_accum x world_size; which samples it holds depends only on
(seed, step), so 2 processes x 1 micro-batch train on what 1 process x 2 micro-batches does.
Resume is exact because the batch, the dropout seed and the learning rate are all functions of the
step, and the optimizer state is saved with the weights.
"""

from __future__ import annotations

import math
import os
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist

from glmaas.model.glm import GLM, GLMConfig
from glmaas.model.glm_checkpoint import load_checkpoint, save_checkpoint
from glmaas.model.glm_tokenizer import GLMTokenizer, train_tokenizer
from glmaas.training.data import TokenShards, get_batch, read_documents, tokenize_to_shards
from glmaas.training.evaluate import evaluate, forward_batch, to_tensors
from glmaas.training.metrics import MetricsLog, plot_loss_curve
from glmaas.training.objectives import make_objective

TRAINER_STATE = "trainer_state.pt"


@dataclass
class TrainConfig:
    data: list[str]
    out_dir: str
    eval_data: list[str] = field(default_factory=list)  # empty: hold out the last 5% of data
    model: str = "glm-tiny"
    objective: str = "glm"
    tokenizer: str | None = None  # an existing tokenizer.json; else one is trained on `data`
    shard_dir: str | None = None  # where token shards live (default out_dir/data); shareable
    vocab_size: int = 4096
    seq_len: int = 128
    batch_size: int = 16  # per process, per micro-step
    grad_accum: int = 1
    steps: int = 200
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup: int = 20
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    dropout: float = 0.1  # attention and hidden dropout, THUDM/GLM's default
    seed: int = 0
    bf16: bool = False
    eval_every: int = 100
    eval_batches: int = 4
    checkpoint_every: int = 100
    stop_at: int | None = None  # stop early (as if interrupted), keeping the schedule of `steps`
    resume: bool = False
    progress: bool = True
    device: str = "auto"


def get_lr(it: int, lr: float, warmup: int, steps: int, min_lr_ratio: float = 0.1) -> float:
    """Linear warmup to lr over `warmup` steps, then cosine decay to min_lr_ratio * lr at `steps`."""
    if it < warmup:
        return lr * (it + 1) / warmup
    if it >= steps:
        return lr * min_lr_ratio
    ratio = (it - warmup) / max(1, steps - warmup)
    coeff = 0.5 * (1.0 + math.cos(math.pi * ratio))
    return lr * (min_lr_ratio + coeff * (1.0 - min_lr_ratio))


def sample_indices(step_rank: int, micro: int, grad_accum: int, batch_size: int) -> range:
    """Global sample indices of micro-step `micro` on process `step_rank` (see module docstring)."""
    start = (step_rank * grad_accum + micro) * batch_size
    return range(start, start + batch_size)


def _setup_distributed(device: str) -> tuple[int, int, str]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
        if device == "cuda":
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
            torch.cuda.set_device(device)
    return rank, world, device


def _barrier(world: int) -> None:
    if world > 1:
        dist.barrier()


def prepare_data(cfg: TrainConfig, rank: int, world: int) -> tuple[GLMTokenizer, TokenShards, TokenShards]:
    """Tokenizer and token shards under out_dir (rank 0 builds them once; others wait)."""
    out = Path(cfg.out_dir)
    tok_path = out / "tokenizer.json"
    shard_dir = Path(cfg.shard_dir) if cfg.shard_dir else out / "data"
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        if not tok_path.exists():
            if cfg.tokenizer:
                tok = GLMTokenizer.load(cfg.tokenizer)
            else:
                tok = train_tokenizer((d for p in cfg.data for d in read_documents(p)), cfg.vocab_size)
            tok.save(tok_path)
        tok = GLMTokenizer.load(tok_path)
        for name, paths in (("train", cfg.data), ("eval", cfg.eval_data)):
            if paths and not (shard_dir / name / "meta.json").exists():
                tokenize_to_shards(paths, tok, shard_dir / name)
    _barrier(world)
    tok = GLMTokenizer.load(tok_path)
    train = TokenShards(shard_dir / "train")
    if cfg.eval_data:
        return tok, train, TokenShards(shard_dir / "eval")
    return tok, train.split(0.0, 0.95), train.split(0.95, 1.0)


def build_model(cfg: TrainConfig, vocab_size: int) -> GLM:
    preset = GLMConfig.from_name(cfg.model)
    return GLM(GLMConfig.from_name(cfg.model, vocab_size=vocab_size, dropout=cfg.dropout, max_seq_len=max(preset.max_seq_len, cfg.seq_len)))


def train(cfg: TrainConfig, probe: Callable[[GLM, int], dict] | None = None) -> dict:
    """Train (or resume) as configured; returns the last logged losses and eval metrics.

    `probe(model, step)`, if given, runs at every evaluation (the model in eval mode) and what it
    returns is logged with that step, e.g. the objectives experiment's probes.
    """
    rank, world, device = _setup_distributed(cfg.device)
    tok, train_shards, eval_shards = prepare_data(cfg, rank, world)
    ids = tok.special
    objective = make_objective(cfg.objective, ids, tok.vocab_size, tok.sentence_end_ids() if cfg.objective == "glm-multitask" else None)
    infill = make_objective("glm-token", ids, tok.vocab_size)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, tok.vocab_size).to(device)
    optimizer = model.configure_optimizer(cfg.lr, cfg.weight_decay)
    out = Path(cfg.out_dir)
    ckpt = out / "checkpoint"
    start = 0
    if cfg.resume and (ckpt / TRAINER_STATE).exists():
        loaded, _, _ = load_checkpoint(ckpt, device)
        model.load_state_dict(loaded.state_dict())
        state = torch.load(ckpt / TRAINER_STATE, map_location=device, weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        start = int(state["step"])
    ddp = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    log = MetricsLog(out / "metrics.jsonl", truncate_from=start) if rank == 0 else None
    end = min(cfg.steps, cfg.stop_at) if cfg.stop_at is not None else cfg.steps
    tokens_per_step = cfg.batch_size * cfg.seq_len * cfg.grad_accum * world
    bar = None
    if rank == 0 and cfg.progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, initial=start, unit="step", dynamic_ncols=True)
    result: dict = {}
    model.train()
    for step in range(start, end):
        t_step = time.perf_counter()
        lr = get_lr(step, cfg.lr, cfg.warmup, cfg.steps, cfg.min_lr_ratio)
        for group in optimizer.param_groups:
            group["lr"] = lr
        torch.manual_seed(cfg.seed * 1_000_003 + step * 101 + rank)  # dropout: a function of the step
        loss_sum = 0.0
        for micro in range(cfg.grad_accum):
            idx = sample_indices(rank, micro, cfg.grad_accum, cfg.batch_size)
            batch = to_tensors(get_batch(train_shards, objective, cfg.seq_len, cfg.seed, step, idx, ids.pad), device)
            sync = world == 1 or micro == cfg.grad_accum - 1
            ctx = ddp.no_sync() if not sync else nullcontext()
            with ctx, torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=cfg.bf16):
                _, loss = forward_batch(ddp, batch)
                (loss / cfg.grad_accum).backward()
            loss_sum += loss.item() / cfg.grad_accum
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip).item()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if world > 1:
            t = torch.tensor([loss_sum], device=device)
            dist.all_reduce(t)
            loss_sum = t.item() / world
        tps = tokens_per_step / max(time.perf_counter() - t_step, 1e-9)  # eval and saving excluded
        done = step + 1
        if rank == 0:
            result["loss"] = loss_sum
            log.write({"step": done, "loss": loss_sum, "lr": lr, "grad_norm": grad_norm, "tokens": done * tokens_per_step, "tokens_per_s": tps})
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss_sum:.3f}", tok_s=f"{tps:,.0f}")
            if done % cfg.eval_every == 0 or done == cfg.steps:
                held = evaluate(model, eval_shards, objective, cfg.seq_len, ids.pad, cfg.eval_batches, cfg.batch_size, device)
                acc = evaluate(model, eval_shards, infill, cfg.seq_len, ids.pad, cfg.eval_batches, cfg.batch_size, device)
                result.update(eval_loss=held["loss"], infill_acc=acc["acc"])
                record = {"step": done, "eval_loss": held["loss"], "infill_acc": acc["acc"]}
                if probe is not None:
                    record.update(probe(model, done))
                    model.train()
                log.write(record)
            if done % cfg.checkpoint_every == 0 or done == end:
                _save(ckpt, model, optimizer, tok, cfg, done)
    if bar is not None:
        bar.close()
    if rank == 0 and end == cfg.steps:
        plot_loss_curve(out / "metrics.jsonl", out / "loss.png", title=f"{cfg.model} / {cfg.objective}")
    _barrier(world)
    return result


def _save(path: Path, model: GLM, optimizer, tok: GLMTokenizer, cfg: TrainConfig, step: int) -> None:
    save_checkpoint(path, model, tok, extra={"train": asdict(cfg), "step": step})
    torch.save({"optimizer": optimizer.state_dict(), "step": step}, path / (TRAINER_STATE + ".tmp"))
    (path / (TRAINER_STATE + ".tmp")).replace(path / TRAINER_STATE)
