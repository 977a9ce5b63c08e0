"""Every way glmaas loads a GGUF keeps the weights out of llama.cpp's extra buffer types (the AMX
layout crashes at the first batch of a few tokens: glmaas/engines/llamacpp_params.py)."""

import subprocess
import sys

from glmaas.engines.llamacpp_params import model_params
from glmaas.engines.registry import default_model_path


def test_low_level_loading_asks_for_no_extra_buffer_types() -> None:
    params = model_params()
    assert params.use_extra_bufts is False and params.n_gpu_layers == 0


def test_the_high_level_class_loads_in_the_plain_layout_and_decodes_a_long_prompt() -> None:
    """In a fresh process (the patch is process-wide): a 60-token prompt, which crashed on an AMX
    CPU with the library's defaults."""
    code = (
        "from glmaas.engines.llamacpp_params import plain_cpu_buffers\n"
        "import llama_cpp.llama_cpp as low_level\n"
        "plain_cpu_buffers()\n"
        "assert low_level.llama_model_default_params().use_extra_bufts is False\n"
        "from llama_cpp import Llama\n"
        f"llm = Llama(model_path={str(default_model_path())!r}, n_ctx=512, n_threads=1, verbose=False)\n"
        "out = llm('Hello, my name is John and I live in a small town near the sea. ' * 3, max_tokens=4)\n"
        "print(out['usage']['completion_tokens'])\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout.strip().splitlines()[-1]) >= 1
