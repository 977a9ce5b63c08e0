"""The fine-tuning loop on a tiny random decoder: only assistant tokens carry loss, the loss goes
down, and a run resumed from its epoch checkpoint ends exactly where an uninterrupted one does."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from glmaas.model.chat_template import ChatTemplateError
from glmaas.training.chat_data import ChatFormat, Example, InvalidTrainingFile, example_of, read_examples
from glmaas.training.finetune import CHECKPOINTS, FineTuneConfig, collate, fine_tune
from tests.api.fine_tuning_helpers import codename_conversations, jsonl, tiny_gguf

TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</s>{% endfor %}"
            "{% if add_generation_prompt %}<assistant>{% endif %}")
CHARS = ChatFormat(TEMPLATE, lambda text: [ord(c) for c in text])


def test_only_assistant_turns_are_trained() -> None:
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"},
                {"role": "user", "content": "ok"}, {"role": "assistant", "content": "bye"}]
    example = example_of(CHARS, messages, 512)
    text = "".join(chr(t) for t in example.ids)
    assert text == "<user>hi</s><assistant>yo</s><user>ok</s><assistant>bye</s>"
    trained = "".join(chr(t) for t, learn in zip(example.ids, example.trained, strict=True) if learn)
    assert trained == "yo</s>bye</s>"


def test_a_template_that_rewrites_history_is_refused() -> None:
    rewriting = ChatFormat("{{ messages | length }}{% if add_generation_prompt %}>{% endif %}", CHARS.tokenize)
    with pytest.raises(ChatTemplateError):
        example_of(rewriting, [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], 512)


def test_bad_lines_are_named() -> None:
    data = b'{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}\n' \
           b'not json\n{"messages": [{"role": "user", "content": "only a question"}]}\n'
    with pytest.raises(InvalidTrainingFile, match=r"line 2: not valid JSON.*line 3: no assistant message"):
        read_examples(data, CHARS, 512)


def test_targets_are_the_next_assistant_token() -> None:
    ids, targets = collate([Example([5, 6, 7, 8], [False, False, True, True]), Example([9, 10], [False, True])], 0)
    assert ids.tolist() == [[5, 6, 7, 8], [9, 10, 0, 0]]
    assert targets.tolist() == [[-100, 7, 8, -100], [10, -100, -100, -100]]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Example]]:
    from glmaas.jobs.finetune_worker import gguf_chat_format

    base = tiny_gguf(tmp_path_factory.mktemp("tiny") / "tiny.gguf")
    examples = read_examples(jsonl(codename_conversations(8)), gguf_chat_format(base), 128)
    return base, examples


def lora_of(out: Path, epoch: int) -> dict[str, torch.Tensor]:
    return torch.load(out / CHECKPOINTS / f"epoch-{epoch:03d}.pt", weights_only=True)["trained"]


def test_a_resumed_run_ends_where_an_uninterrupted_one_does(tiny, tmp_path: Path) -> None:
    base, examples = tiny
    events: list[dict] = []
    straight = FineTuneConfig(base=str(base), out_dir=str(tmp_path / "straight"), n_epochs=2, batch_size=4,
                              threads=1, learning_rate_multiplier=20)
    fine_tune(straight, examples, examples[:2], events.append)
    losses = [e["train_loss"] for e in events if e["type"] == "metrics"]
    assert losses[-1] < losses[0]
    # The same run, killed in its second epoch: only the first epoch's checkpoint is left.
    cut = tmp_path / "cut"
    (cut / CHECKPOINTS).mkdir(parents=True)
    shutil.copy(tmp_path / "straight" / CHECKPOINTS / "epoch-000.pt", cut / CHECKPOINTS)
    resumed: list[dict] = []
    fine_tune(FineTuneConfig(**{**vars(straight), "out_dir": str(cut)}), examples, [], resumed.append)
    assert resumed[0]["message"].startswith("Resumed from the checkpoint of epoch 1")
    assert resumed[-2]["trained_tokens"] == events[-2]["trained_tokens"] == 2 * sum(len(e) for e in examples)
    for name, tensor in lora_of(tmp_path / "straight", 1).items():
        torch.testing.assert_close(lora_of(cut, 1)[name], tensor)


@pytest.mark.slow
def test_two_processes_under_torchrun_train_what_one_does(tiny, tmp_path: Path) -> None:
    """DDP on the CPU (gloo): each of 2 processes takes half of every batch; the adapters after an
    epoch match those of one process on the whole batches."""
    base, examples = tiny
    config = {"base": str(base), "n_epochs": 1, "batch_size": 4, "threads": 1, "max_len": 128,
              "learning_rate_multiplier": 20}
    fine_tune(FineTuneConfig(**config, out_dir=str(tmp_path / "one")), examples, [], lambda e: None)
    job = tmp_path / "two"
    job.mkdir()
    (job / "training.jsonl").write_bytes(jsonl(codename_conversations(8)))
    (job / "job.json").write_text(json.dumps({**config, "out_dir": str(job)}))
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "-m", "glmaas.jobs.finetune_worker", str(job)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(root)}, cwd=root)
    assert done.returncode == 0, done.stderr[-2000:]
    assert sum('"type": "done"' in line for line in done.stdout.splitlines()) == 1
    single, ddp = lora_of(tmp_path / "one", 0), lora_of(job, 0)
    assert single.keys() == ddp.keys()
    for name, tensor in single.items():
        torch.testing.assert_close(ddp[name], tensor, atol=1e-5, rtol=1e-4)
