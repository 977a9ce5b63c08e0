"""What a fine-tuning run is asked to do (`FineTuneConfig`), apart from the trainer in
`glmaas.training.finetune`: the server's job runner builds and stores configs without importing
PyTorch, which only the worker process that trains needs."""

from __future__ import annotations

import os
from dataclasses import dataclass

# The learning rates a multiplier of 1 stands for.
LORA_LR = 2e-4
FULL_LR = 2e-5


@dataclass
class FineTuneConfig:
    base: str  # the base model's GGUF file
    out_dir: str  # checkpoints and the result
    n_epochs: int = 3
    batch_size: int = 4
    learning_rate_multiplier: float = 1.0
    lora: bool = True  # False: train every weight
    lora_rank: int = 8
    lora_alpha: float = 16.0
    max_len: int = 512  # tokens of one example; longer conversations are cut
    seed: int = 0
    threads: int | None = None  # None: default_threads()
    device: str = "auto"

    @property
    def learning_rate(self) -> float:
        return (LORA_LR if self.lora else FULL_LR) * self.learning_rate_multiplier


def default_threads() -> int:
    """Every core but one: the server that started the job keeps a core for its requests."""
    return max(1, (os.cpu_count() or 2) - 1)
