"""Fine-tuning throughput and memory: glmaas's LoRA and full fine-tuning steps against
transformers (+ peft's `get_peft_model`) on SmolLM2-135M, the same weights, data, batch,
sequence length, dtype (fp32), LoRA rank and targets, and torch threads.

Each measurement is a fresh subprocess per contender (so its peak RSS, the high-water mark of
`getrusage`, is its own), and the contenders alternate in rounds so a neighbour's load on a
shared CPU hits them alike. A step is forward + backward + AdamW over one batch whose second half
of every row carries the loss (an assistant turn); glmaas computes logits only where the loss is
taken (as its jobs do), transformers over the whole sequence (as its `labels` do). Tokens/s count
every position of the batch. Prints the load average before and after: figures taken beside
other CPU work measure the contention.

    python bench/finetune.py [--steps 8] [--rounds 3] [--batch-size 4] [--seq-len 256] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

CONTENDERS = {"lora": ("glmaas-lora", "peft-lora"), "full": ("glmaas-full", "transformers-full")}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def make_batch(vocab: int, batch: int, seq_len: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random token ids (B, T) and labels: the ids on each row's second half, -100 before."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(100, vocab, (batch, seq_len), generator=g)
    labels = ids.clone()
    labels[:, : seq_len // 2] = -100
    return ids, labels


def glmaas_model(hf_dir: Path, lora: bool, rank: int):  # type: ignore[no-untyped-def]
    from glmaas.model.lora import apply_lora
    from glmaas.model.weights import load_hf_dir
    from glmaas.training.finetune import AssistantLoss

    model = load_hf_dir(hf_dir)
    if lora:
        apply_lora(model, rank=rank, alpha=2 * rank, targets=tuple(TARGETS))
    loss_fn = AssistantLoss(model)

    def step_loss(ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        targets = torch.full_like(labels, -100)
        targets[:, :-1] = labels[:, 1:]  # AssistantLoss takes next-token targets
        return loss_fn(ids, targets) / (targets != -100).sum()

    return model, step_loss


def transformers_model(hf_dir: Path, lora: bool, rank: int):  # type: ignore[no-untyped-def]
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0,
                                                 target_modules=TARGETS, task_type="CAUSAL_LM"))
    model.config.use_cache = False

    def step_loss(ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return model(input_ids=ids, labels=labels).loss

    return model, step_loss


def measure(args: argparse.Namespace) -> dict:
    """One contender in this process: seconds per step after a warm-up step, and peak RSS."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    build = glmaas_model if args.contender.startswith("glmaas") else transformers_model
    model, step_loss = build(Path(args.hf_dir), args.contender.endswith("lora"), args.rank)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    ids, labels = make_batch(model.config.vocab_size, args.batch_size, args.seq_len)
    times, losses = [], []
    for i in range(args.steps + 1):
        t0 = time.perf_counter()
        loss = step_loss(ids, labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i:  # the first step warms the allocator and the kernels up
            times.append(time.perf_counter() - t0)
        losses.append(loss.item())
    step_s = sorted(times)[len(times) // 2]
    return {"contender": args.contender, "step_s": step_s, "tokens_per_s": args.batch_size * args.seq_len / step_s,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "first_loss": losses[0],
            "trainable": sum(p.numel() for p in params)}


def prepare(work: Path) -> Path:
    """SmolLM2-135M (the default GGUF, dequantised to fp32) as a Hugging Face folder both read."""
    from glmaas.engines.registry import default_model_path
    from glmaas.model.weights import load_gguf, save_hf_dir

    model, _ = load_gguf(default_model_path())
    return save_hf_dir(model, work / "smollm2-135m")


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--only", choices=sorted(CONTENDERS), help="only the LoRA or only the full comparison")
    parser.add_argument("--contender", help=argparse.SUPPRESS)
    parser.add_argument("--hf-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.contender:
        print(json.dumps(measure(args)))
        return
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
          f"{torch.__version__}, {args.threads} threads; batch {args.batch_size} x {args.seq_len} tokens, fp32, "
          f"LoRA rank {args.rank}; {args.steps} timed steps x {args.rounds} rounds")
    print(f"load average before: {load_average()}")
    with tempfile.TemporaryDirectory(prefix="bench-finetune-") as tmp:
        hf_dir = prepare(Path(tmp))
        results: dict[str, list[dict]] = {}
        pairs = [CONTENDERS[args.only]] if args.only else list(CONTENDERS.values())
        for r in range(args.rounds):
            for pair in pairs:
                for contender in pair if r % 2 == 0 else reversed(pair):
                    out = subprocess.run(
                        [sys.executable, __file__, "--contender", contender, "--hf-dir", str(hf_dir),
                         "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--seq-len",
                         str(args.seq_len), "--rank", str(args.rank), "--threads", str(args.threads)],
                        capture_output=True, text=True, check=True)
                    results.setdefault(contender, []).append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"load average after:  {load_average()}")
    print(f"{'contender':<18} {'step s':>8} {'tokens/s':>9} {'peak RSS MB':>12} {'trainable':>11}")
    best = {}
    for contender, runs in results.items():
        step = min(x["step_s"] for x in runs)  # the least disturbed round
        rss = max(x["peak_rss_mb"] for x in runs)
        best[contender] = (step, rss)
        print(f"{contender:<18} {step:>8.3f} {args.batch_size * args.seq_len / step:>9.0f} {rss:>12.0f} "
              f"{runs[0]['trainable']:>11,}")
    for ours, theirs in pairs:
        (s_ours, m_ours), (s_theirs, m_theirs) = best[ours], best[theirs]
        print(f"{ours} / {theirs}: tokens/s x{s_theirs / s_ours:.2f}, peak memory x{m_ours / m_theirs:.2f}")


if __name__ == "__main__":
    main()
