"""llama-cpp-python's OpenAI server, loading its model the way glmaas does (weights in llama.cpp's
plain CPU layout: see `glmaas.engines.llamacpp_params`), so that it runs wherever glmaas does.

    python -m glmaas.benchmarks.llama_cpp_server --model PATH [its own options]
"""

from glmaas.engines.llamacpp_params import plain_cpu_buffers

if __name__ == "__main__":
    plain_cpu_buffers()
    from llama_cpp.server.__main__ import main

    main()
