"""llama-cpp-python's OpenAI server with the weights loaded as glmaas loads them: without
llama.cpp's extra buffer types, whose AMX matrix product crashes the first decode on CPUs that have
AMX (`glmaas.engines.llamacpp.load_model` says more). Both sides of a comparison then run the same
CPU kernels. Takes llama_cpp.server's own arguments:

    python -m glmaas.benchmarks.llama_cpp_server --model PATH --port 8001 ...
"""

from __future__ import annotations

import runpy
import sys

import llama_cpp.llama_cpp

_default_model_params = llama_cpp.llama_cpp.llama_model_default_params


def _model_params() -> llama_cpp.llama_cpp.llama_model_params:
    params = _default_model_params()
    params.use_extra_bufts = False
    return params


def main() -> None:
    # `Llama` reads the defaults through this module attribute each time it loads a model.
    llama_cpp.llama_cpp.llama_model_default_params = _model_params
    sys.argv[0] = "llama_cpp.server"
    runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
