"""GLM checkpoints: a folder with `model.safetensors`, `config.json` and `tokenizer.json`.

`config.json` holds the model config under "model" plus whatever the writer adds (the training
config, the step). This is the format the native engine loads; training adds its optimizer state
in a separate file next to these.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model

from glmaas.model.glm import GLM, GLMConfig
from glmaas.model.glm_tokenizer import GLMTokenizer

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
TOKENIZER = "tokenizer.json"


def save_checkpoint(path: str | Path, model: GLM, tokenizer: GLMTokenizer, extra: dict | None = None) -> Path:
    """Write weights, config and tokenizer; files are written then renamed, so a reader never sees
    a half-written checkpoint."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    # save_model handles the tied output layer (one tensor shared by wte and the output).
    save_model(model, str(path / (WEIGHTS + ".tmp")))
    (path / (WEIGHTS + ".tmp")).replace(path / WEIGHTS)
    tokenizer.save(path / TOKENIZER)
    config = {"model": model.config.to_dict(), **(extra or {})}
    (path / (CONFIG + ".tmp")).write_text(json.dumps(config, indent=1))
    (path / (CONFIG + ".tmp")).replace(path / CONFIG)
    return path


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[GLM, GLMTokenizer, dict]:
    """The model (eval mode), its tokenizer and the whole config.json."""
    path = Path(path)
    config = json.loads((path / CONFIG).read_text())
    model = GLM(GLMConfig(**config["model"]))
    load_model(model, str(path / WEIGHTS), device=str(device))
    model.to(device).eval()
    return model, GLMTokenizer.load(path / TOKENIZER), config
