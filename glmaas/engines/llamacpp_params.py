"""How glmaas has llama.cpp load a GGUF: on the CPU, without extra buffer types.

A native build of llama.cpp on a CPU with AMX (Intel Sapphire Rapids and later) repacks the
quantised weights into ggml's AMX buffer type, and its matrix product crashes the process
(SIGSEGV) at the first batch of more than a few tokens: llama.cpp issue 20824, closed as stale
without a fix; seen with the default Q4_1 model and a 60-token prompt, while a 2-token prompt
passes. Without extra buffer types the weights stay in the plain CPU layout, the one every figure
and every batch-invariance claim in docs/performance.md was measured with.

`model_params()` is for code that loads through llama.cpp's own API; `plain_cpu_buffers()` makes
llama-cpp-python's `Llama` class (its OpenAI server, the tests that compare against it) load the
same way.
"""

from __future__ import annotations

import llama_cpp
import llama_cpp.llama_cpp as low_level

_library_defaults = low_level.llama_model_default_params


def _defaults_without_extra_buffers() -> llama_cpp.llama_model_params:
    params = _library_defaults()
    params.use_extra_bufts = False
    return params


def model_params() -> llama_cpp.llama_model_params:
    """llama.cpp's default model parameters, CPU only, without extra buffer types."""
    params = _defaults_without_extra_buffers()
    params.n_gpu_layers = 0
    return params


def plain_cpu_buffers() -> None:
    """From now on every `llama_cpp.Llama` made in this process loads without extra buffer types
    (it starts from `llama_model_default_params`, looked up on each load)."""
    low_level.llama_model_default_params = _defaults_without_extra_buffers
