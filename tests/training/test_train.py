"""`glmaas train` / `glmaas generate` end to end, through the real command in a subprocess."""

import json
import os
import subprocess
import sys

import pytest

from tests.training.conftest import ROOT, run_cli

TINY = ["--model", "glm-micro", "--vocab-size", "300", "--seq-len", "64", "--batch-size", "4",
        "--lr", "3e-3", "--warmup", "2", "--no-progress", "--threads", "1"]  # fmt: skip


def losses(out) -> dict[int, float]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    """6 uninterrupted steps: the reference run for resume and the checkpoint for generation."""
    out = tmp_path_factory.mktemp("full")
    run_cli("train", "--data", str(corpus), "--out", str(out), "--steps", "6", "--eval-every", "3", "--checkpoint-every", "3", *TINY)
    return out


def test_training_writes_a_checkpoint_metrics_and_a_loss_curve(trained):
    for name in ("model.safetensors", "config.json", "tokenizer.json", "trainer_state.pt"):
        assert (trained / "checkpoint" / name).exists()
    assert (trained / "loss.png").stat().st_size > 1000
    rows = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "eval_loss" in r]
    assert [r["step"] for r in evals] == [3, 6] and 0 <= evals[-1]["infill_acc"] <= 1
    assert all(r["tokens_per_s"] > 0 for r in rows if "loss" in r)
    ls = losses(trained)
    assert sorted(ls) == list(range(1, 7)) and ls[6] < ls[1]


def test_a_stopped_and_resumed_run_gives_the_same_losses(trained, corpus, tmp_path):
    args = ["train", "--data", str(corpus), "--out", str(tmp_path), "--steps", "6", "--eval-every", "3"]
    tok = ["--tokenizer", str(trained / "tokenizer.json")]
    run_cli(*args, "--stop-at", "3", *tok, *TINY)
    assert sorted(losses(tmp_path)) == [1, 2, 3]
    run_cli(*args, "--resume", *tok, *TINY)
    resumed, full = losses(tmp_path), losses(trained)
    assert sorted(resumed) == list(range(1, 7))
    assert resumed == pytest.approx(full, rel=1e-6, abs=1e-6)


def test_two_ddp_processes_match_one_process_with_the_same_global_batch(corpus, tmp_path):
    jsonl = tmp_path / "corpus.jsonl"
    text = corpus.read_text()
    jsonl.write_text("".join(json.dumps({"text": text[i : i + 5000]}) + "\n" for i in range(0, len(text), 5000)))
    # no dropout: its masks are drawn per process, so they differ between the two layouts
    common = ["--data", str(jsonl), "--steps", "3", "--eval-every", "100", "--checkpoint-every", "100", *TINY, "--dropout", "0"]
    common[common.index("--batch-size") + 1] = "2"
    run_cli("train", "--out", str(tmp_path / "single"), "--grad-accum", "2", *common)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    ddp = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "glmaas", "train", "--out", str(tmp_path / "ddp"), "--grad-accum", "1", *common,
         "--tokenizer", str(tmp_path / "single" / "tokenizer.json")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    single, multi = losses(tmp_path / "single"), losses(tmp_path / "ddp")
    assert sorted(multi) == [1, 2, 3]
    assert multi == pytest.approx(single, rel=1e-4)
    assert json.loads((tmp_path / "ddp" / "data" / "train" / "meta.json").read_text())["sources"] == ["corpus.jsonl"]


def test_generate_continues_a_prompt_and_fills_masks(trained):
    ckpt = str(trained / "checkpoint")
    out = run_cli("generate", "--checkpoint", ckpt, "--prompt", "ROMEO:", "--max-new-tokens", "8", "--seed", "1").stdout
    assert out.startswith("ROMEO:") and len(out.strip()) > len("ROMEO:")
    filled = run_cli("generate", "--checkpoint", ckpt, "--prompt", "First [MASK] Citizen", "--temperature", "0", "--max-new-tokens", "4").stdout
    assert filled.startswith("First") and filled.rstrip().endswith("Citizen") and "[MASK]" not in filled


def test_bf16_autocast_trains(corpus, trained, tmp_path):
    import math

    from glmaas.training.train import TrainConfig, train

    cfg = TrainConfig(data=[str(corpus)], out_dir=str(tmp_path), model="glm-micro", tokenizer=str(trained / "tokenizer.json"),
                      seq_len=64, batch_size=4, steps=2, warmup=1, bf16=True, eval_every=2, eval_batches=1, progress=False)  # fmt: skip
    result = train(cfg)
    assert math.isfinite(result["loss"]) and math.isfinite(result["eval_loss"])
