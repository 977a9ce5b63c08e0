"""Which sampler should the decode loop use: numpy over the logits row, or llama.cpp's chain?

Times one token pick from a real logits row of the default model, both ways, for greedy and for
temperature 0.8 / top-p 0.95 and temperature 1.0 / top-p 1.0:

    python -m glmaas.benchmarks.sampling
"""

from __future__ import annotations

import time

import llama_cpp
import numpy as np

from glmaas.engines.base import SamplingParams
from glmaas.engines.llamacpp import load_model
from glmaas.engines.registry import default_model_path
from glmaas.engines.sampling import Sampler


def _chain(temperature: float, top_p: float) -> llama_cpp.llama_sampler_p:
    chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
    if temperature <= 0:
        llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_greedy())
    else:
        llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_top_p(top_p, 1))
        llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_temp(temperature))
        llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_dist(1234))
    return chain


def _per_call_us(fn, n: int) -> float:  # type: ignore[no-untyped-def]
    fn()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1e6


def main(n: int = 300) -> None:
    model = load_model("smollm2", default_model_path())
    vocab = llama_cpp.llama_model_get_vocab(model)
    n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
    cparams = llama_cpp.llama_context_default_params()
    cparams.n_ctx, cparams.n_threads, cparams.n_threads_batch = 256, 2, 2
    ctx = llama_cpp.llama_init_from_model(model, cparams)
    text = b"<|im_start|>user\nWrite a poem about the sea.<|im_end|>\n<|im_start|>assistant\n"
    toks = (llama_cpp.llama_token * 64)()
    k = llama_cpp.llama_tokenize(vocab, text, len(text), toks, 64, False, True)
    assert llama_cpp.llama_decode(ctx, llama_cpp.llama_batch_get_one(toks, k)) == 0
    row = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, -1), shape=(n_vocab,))
    print(f"one pick from {n_vocab} logits, mean of {n} calls")
    for temperature, top_p in ((0.0, 1.0), (0.8, 0.95), (1.0, 1.0)):
        sampler = Sampler(SamplingParams(1, temperature=temperature, top_p=top_p, seed=1234))
        chain = _chain(temperature, top_p)
        ours = _per_call_us(lambda s=sampler: s.sample(row), n)
        theirs = _per_call_us(lambda c=chain: llama_cpp.llama_sampler_sample(c, ctx, -1), n)
        print(f"  temperature {temperature:.1f} top_p {top_p:.2f}:  numpy {ours:7.1f} µs   "
              f"llama.cpp chain {theirs:7.1f} µs")
        llama_cpp.llama_sampler_free(chain)
    llama_cpp.llama_free(ctx)
    llama_cpp.llama_model_free(model)


if __name__ == "__main__":
    main()
