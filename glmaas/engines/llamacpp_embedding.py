"""A GGUF model served as an embedding model, by llama.cpp's embedding mode.

`--model ID=llamacpp:PATH,embedding=true,pooling=mean|cls|last[,threads=N,ctx=N]`: the model's
last hidden states pooled over each input (their mean, the first token's, or the last token's),
scaled to unit length. Inputs are framed with the BOS/EOS tokens the GGUF says its tokenizer adds.
Concurrent requests share decode calls through the `DynamicBatcher`: each input of a pass is one
sequence of one `llama_batch`, and the KV cache is cleared after every pass.

Options: `pooling` (default mean), `threads` (default: all cores), `ctx` (the most tokens of one
input, default min(512, trained context)).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import llama_cpp
import numpy as np

from glmaas.engines.base import EngineError, ModelInfo
from glmaas.engines.embedding import DynamicBatcher, Vectors
from glmaas.engines.llamacpp import load_model, tokenize_text
from glmaas.engines.llamacpp_batch import _Batch

POOLINGS = {"mean": llama_cpp.LLAMA_POOLING_TYPE_MEAN, "cls": llama_cpp.LLAMA_POOLING_TYPE_CLS,
            "last": llama_cpp.LLAMA_POOLING_TYPE_LAST}
DEFAULT_INPUT_TOKENS = 512
MAX_ROWS = 32  # sequences of one pass (llama.cpp's n_seq_max)


class LlamaCppEmbedder:
    """An `EmbeddingModel` over a GGUF file; see the module docstring."""

    def __init__(self, model_id: str, path: Path, *, pooling: str = "mean", threads: int | None = None,
                 input_tokens: int | None = None) -> None:
        model = self._model = load_model(model_id, path)
        self._vocab = llama_cpp.llama_model_get_vocab(model)
        per_input = min(input_tokens or DEFAULT_INPUT_TOKENS, llama_cpp.llama_model_n_ctx_train(model))
        # One pass holds at least one longest input, and up to MAX_ROWS short ones.
        batch_tokens = max(per_input, 2048)
        cparams = llama_cpp.llama_context_default_params()
        cparams.embeddings = True
        cparams.pooling_type = POOLINGS[pooling]
        cparams.n_ctx = batch_tokens
        cparams.n_batch = cparams.n_ubatch = batch_tokens  # a pooled input must fit one ubatch
        cparams.n_seq_max = MAX_ROWS
        cparams.kv_unified = True  # the inputs of a pass share the cache; it is cleared after each
        cparams.n_threads = cparams.n_threads_batch = threads or os.cpu_count() or 1
        cparams.no_perf = True
        ctx = llama_cpp.llama_init_from_model(model, cparams)
        if not ctx:
            llama_cpp.llama_model_free(model)
            raise EngineError(f"model {model_id!r}: llama.cpp could not create an embedding context")
        self._ctx = ctx
        self._mem = llama_cpp.llama_get_memory(ctx)
        self._batch = _Batch(batch_tokens)
        self.dimensions = llama_cpp.llama_model_n_embd(model)
        self.vocab_size = llama_cpp.llama_vocab_n_tokens(self._vocab)
        self._prefix = ((llama_cpp.llama_vocab_bos(self._vocab),)
                        if llama_cpp.llama_vocab_get_add_bos(self._vocab) else ())
        self._suffix = ((llama_cpp.llama_vocab_eos(self._vocab),)
                        if llama_cpp.llama_vocab_get_add_eos(self._vocab) else ())
        self.info = ModelInfo(model_id=model_id, context_length=per_input, chat_template=None)
        self.batcher = DynamicBatcher(self._forward, max_batch_tokens=batch_tokens, max_rows=MAX_ROWS)

    @classmethod
    def from_spec(cls, model_id: str, path: Path, options: dict[str, str]) -> LlamaCppEmbedder:
        """Build from the options of `--model ID=llamacpp:PATH,embedding=true,pooling=mean`."""
        unknown = set(options) - {"pooling", "threads", "ctx"}
        if unknown:
            raise EngineError(f"model {model_id!r}: unknown llamacpp embedding options {sorted(unknown)}")
        pooling = options.get("pooling", "mean")
        if pooling not in POOLINGS:
            raise EngineError(f"model {model_id!r}: pooling is one of {', '.join(POOLINGS)}, got {pooling!r}")
        try:
            threads = int(options["threads"]) if "threads" in options else None
            input_tokens = int(options["ctx"]) if "ctx" in options else None
        except ValueError as e:
            raise EngineError(f"model {model_id!r}: threads and ctx are integers ({e})") from None
        return cls(model_id, path, pooling=pooling, threads=threads, input_tokens=input_tokens)

    def tokenize(self, text: str) -> list[int]:
        # Text is text: special-token markup in an input is not parsed as control tokens.
        return tokenize_text(self._vocab, text, special=False)

    def frame(self, token_ids: Sequence[int]) -> tuple[int, ...]:
        return (*self._prefix, *token_ids, *self._suffix)

    async def embed(self, inputs: Sequence[tuple[int, ...]]) -> Vectors:
        return await self.batcher.embed(inputs)

    def _forward(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """One decode of a padded batch (padding left out: each row is its own sequence)."""
        batch = self._batch
        batch.clear()
        for row, n in enumerate(mask.sum(axis=1)):
            batch.add(ids[row, :n].tolist(), 0, row, True)
        batch.logits[: batch.n] = 1  # pooling reads every token's state
        try:
            if llama_cpp.llama_decode(self._ctx, batch.raw) != 0:
                raise EngineError("llama.cpp failed to embed the batch")
            out = np.empty((len(ids), self.dimensions), dtype=np.float32)
            for row in range(len(ids)):
                pooled = llama_cpp.llama_get_embeddings_seq(self._ctx, row)
                if not pooled:
                    raise EngineError("llama.cpp returned no pooled embedding")
                out[row] = np.ctypeslib.as_array(pooled, shape=(self.dimensions,))
        finally:
            llama_cpp.llama_memory_clear(self._mem, True)
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)

    async def close(self) -> None:
        """Stop batching and free the context and the model."""
        await self.batcher.close()
        if self._model is not None:
            self._batch.free()
            llama_cpp.llama_free(self._ctx)
            llama_cpp.llama_model_free(self._model)
            self._model = None
