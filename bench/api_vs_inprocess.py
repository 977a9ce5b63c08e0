"""What the API costs: decode tokens/s and time to first token of the default model through
glmaas's streaming chat API, against llama-cpp-python's `Llama` in this process, in one run.

Same chat (the GGUF's own template), same max_tokens, greedy, same thread count; one request at a
time, `--repeats` times each after a warm-up, medians reported. Both sides reuse the cached prompt
prefix between repeats (glmaas's slot cache, `Llama`'s own), so first-token time is mostly the
work around one decode step: that difference is the API's overhead.

  decode tok/s   (completion tokens − 1) / (last chunk − first chunk)
  first token    request sent (or call made) → first content chunk

    python bench/api_vs_inprocess.py [--threads 2] [--max-tokens 128] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import httpx
import llama_cpp

from glmaas.benchmarks.servers import glmaas_server
from glmaas.engines.registry import default_model_path

MESSAGES = [{"role": "user", "content": "Write a long, detailed story about a lighthouse keeper and the sea."}]


def timed_stream(chunks) -> tuple[float, float | None, float | None, int]:  # type: ignore[no-untyped-def]
    """(start, first chunk, last chunk, content chunks) of an iterator of content strings."""
    start = time.perf_counter()
    first = last = None
    n = 0
    for content in chunks:
        if content:
            last = time.perf_counter()
            first = first or last
            n += 1
    return start, first, last, n


def api_chunks(client: httpx.Client, server, max_tokens: int, usage: dict):  # type: ignore[no-untyped-def]
    body = {
        "model": server.model, "messages": MESSAGES, "max_tokens": max_tokens, "temperature": 0.0,
        "stream": True, "stream_options": {"include_usage": True},
    }
    with client.stream("POST", "/chat/completions", json=body) as resp:
        resp.raise_for_status()
        for line in resp.iter_lines():
            if not line.startswith("data:") or line.endswith("[DONE]"):
                continue
            event = json.loads(line[5:])
            if event.get("usage"):
                usage.update(event["usage"])
            for choice in event.get("choices") or []:
                yield (choice.get("delta") or {}).get("content")


def inprocess_chunks(llm: llama_cpp.Llama, max_tokens: int):  # type: ignore[no-untyped-def]
    for chunk in llm.create_chat_completion(MESSAGES, max_tokens=max_tokens, temperature=0.0, stream=True):
        yield chunk["choices"][0]["delta"].get("content")


def measure(make_stream, repeats: int) -> dict:  # type: ignore[no-untyped-def]
    """Medians over `repeats` streams, after one warm-up."""
    list(make_stream())
    ttft, decode, tokens = [], [], []
    for _ in range(repeats):
        start, first, last, n = timed_stream(make_stream())
        ttft.append((first - start) * 1000)
        decode.append((n - 1) / (last - first))
        tokens.append(n)
    return {"ttft_ms": statistics.median(ttft), "decode_tok_s": statistics.median(decode),
            "chunks": statistics.median(tokens), "ttft_all_ms": ttft, "decode_all": decode}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    model = default_model_path()
    load = os.getloadavg()
    print(f"model {model.name}; {os.cpu_count()} cores, threads {args.threads}, max_tokens "
          f"{args.max_tokens}, {args.repeats} repeats; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")

    with glmaas_server(model, f"threads={args.threads}") as server:
        headers = {"Authorization": f"Bearer {server.api_key}"}
        with httpx.Client(base_url=server.base_url, headers=headers, timeout=300) as client:
            usage: dict = {}
            api = measure(lambda: api_chunks(client, server, args.max_tokens, usage), args.repeats)
    llm = llama_cpp.Llama(str(model), n_ctx=2048, n_threads=args.threads, n_threads_batch=args.threads, verbose=False)
    local = measure(lambda: inprocess_chunks(llm, args.max_tokens), args.repeats)
    llm.close()

    print(f"glmaas API      : decode {api['decode_tok_s']:7.1f} tok/s   first token {api['ttft_ms']:7.1f} ms   "
          f"({api['chunks']:.0f} chunks; usage {usage.get('completion_tokens')} completion, "
          f"{usage.get('prompt_tokens_details', {}).get('cached_tokens')} cached prompt tokens)")
    print(f"llama_cpp.Llama : decode {local['decode_tok_s']:7.1f} tok/s   first token {local['ttft_ms']:7.1f} ms   "
          f"({local['chunks']:.0f} chunks)")
    ratio = api["decode_tok_s"] / local["decode_tok_s"]
    overhead = api["ttft_ms"] - local["ttft_ms"]
    print(f"ratio decode API/in-process {ratio:.3f} (target ≥ 0.95: {'MET' if ratio >= 0.95 else 'MISSED'}); "
          f"first-token overhead {overhead:+.1f} ms (target ≤ 10 ms: {'MET' if overhead <= 10 else 'MISSED'})")
    load = os.getloadavg()
    print(f"load average after {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
