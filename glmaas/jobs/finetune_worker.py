"""The process a fine-tuning job trains in: `python -m glmaas.jobs.finetune_worker JOB_DIR`.

The server's job runner (`glmaas.jobs.fine_tuning_runner`) writes `JOB_DIR/job.json` (the
`FineTuneConfig`) beside the job's `training.jsonl` and `validation.jsonl`, starts this process
and reads its events, one JSON object per line on stdout, into the store. The process touches no
database, so it runs as well by hand or under `torchrun` (docs/finetune.md). Started with
`--exit-with-parent`, it stops when the process that started it is gone (the server was killed):
the job then resumes from its last checkpoint when a server takes it up again.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

from glmaas.training.chat_data import ChatFormat, read_examples
from glmaas.training.finetune_config import FineTuneConfig

JOB_FILE = "job.json"
TRAINING_FILE = "training.jsonl"
VALIDATION_FILE = "validation.jsonl"


def gguf_chat_format(path: str | Path) -> ChatFormat:
    """The chat template (from the GGUF's metadata) and the tokenizer of a GGUF model, read by
    llama.cpp as the serving engine reads them, so training tokenizes as serving does."""
    import llama_cpp

    from glmaas.engines.llamacpp import init_backend, model_metadata, tokenize_text

    init_backend()
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
    if not model:
        raise ValueError(f"llama.cpp could not read the tokenizer of {path}")
    vocab = llama_cpp.llama_model_get_vocab(model)

    def text_of(token: int) -> str:
        return llama_cpp.llama_vocab_get_text(vocab, token).decode("utf-8", errors="replace") if token >= 0 else ""

    return ChatFormat(template=model_metadata(model, "tokenizer.chat_template") or "",
                      tokenize=lambda text: tokenize_text(vocab, text, special=True),
                      bos_token=text_of(llama_cpp.llama_vocab_bos(vocab)),
                      eos_token=text_of(llama_cpp.llama_vocab_eos(vocab)))


def _emit(event: dict) -> None:
    print(json.dumps({"at": time.time(), **event}), flush=True)


def _exit_with_parent() -> None:
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(3)

    threading.Thread(target=watch, daemon=True).start()


def run(job_dir: Path) -> Path:
    """Train the job of `job_dir` (resuming from its last checkpoint) and return its GGUF."""
    from glmaas.training.finetune import fine_tune  # PyTorch: only this process needs it

    cfg = FineTuneConfig(**json.loads((job_dir / JOB_FILE).read_text()))
    fmt = gguf_chat_format(cfg.base)
    train = read_examples((job_dir / TRAINING_FILE).read_bytes(), fmt, cfg.max_len)
    valid_path = job_dir / VALIDATION_FILE
    valid = (read_examples(valid_path.read_bytes(), fmt, cfg.max_len, what="validation file")
             if valid_path.exists() else [])
    return fine_tune(cfg, train, valid, _emit)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m glmaas.jobs.finetune_worker", description=__doc__)
    parser.add_argument("job_dir", type=Path)
    parser.add_argument("--exit-with-parent", action="store_true")
    args = parser.parse_args(argv)
    if args.exit_with_parent:
        _exit_with_parent()
    result = run(args.job_dir)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 speaks for the run
        _emit({"type": "done", "model_path": str(result)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
