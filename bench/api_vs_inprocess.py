"""What the API costs: decode tokens/s and time to first token of the default model through
glmaas's streaming chat API, against llama-cpp-python's `Llama` in this process, in one run.

Same chat (the GGUF's own template), same max_tokens, greedy, same thread count; one request at a
time, `--repeats` times each after a warm-up, taking turns (the server idles while `Llama` runs
and the other way round), medians reported. Each repeat's prompt differs from the last in its
final words; both sides reuse the cached prefix (glmaas's slot cache, `Llama`'s own) and compute
the few tokens after it, so the difference in first-token time is the API's overhead.

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
from glmaas.engines.llamacpp_params import plain_cpu_buffers
from glmaas.engines.registry import default_model_path

STORY = "Write a long, detailed story about a lighthouse keeper and the sea (take {n})."


def messages(n: int) -> list[dict[str, str]]:
    # A prompt that differs in its last words from the one before: both sides reuse the cached
    # prefix and compute the rest. (With one prompt repeated, `Llama` keeps the last prompt's
    # logits and computes nothing before its first token, which measures its cache, not the API.)
    return [{"role": "user", "content": STORY.format(n=n)}]


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


def api_chunks(client: httpx.Client, server, n: int, max_tokens: int, usage: dict):  # type: ignore[no-untyped-def]
    body = {
        "model": server.model, "messages": messages(n), "max_tokens": max_tokens, "temperature": 0.0,
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


def inprocess_chunks(llm: llama_cpp.Llama, n: int, max_tokens: int):  # type: ignore[no-untyped-def]
    for chunk in llm.create_chat_completion(messages(n), max_tokens=max_tokens, temperature=0.0, stream=True):
        yield chunk["choices"][0]["delta"].get("content")


def measure(streams: dict, repeats: int) -> dict[str, dict]:  # type: ignore[type-arg]
    """Medians over `repeats` streams of each contender, after one warm-up each; the contenders
    take turns, so that a change in the machine's load falls on both."""
    for make_stream in streams.values():
        list(make_stream(0))
    ttft: dict[str, list[float]] = {name: [] for name in streams}
    decode: dict[str, list[float]] = {name: [] for name in streams}
    chunks: dict[str, list[int]] = {name: [] for name in streams}
    for r in range(1, repeats + 1):
        for name, make_stream in streams.items():
            start, first, last, n = timed_stream(make_stream(r))
            ttft[name].append((first - start) * 1000)
            decode[name].append((n - 1) / (last - first))
            chunks[name].append(n)
    return {
        name: {"ttft_ms": statistics.median(ttft[name]), "decode_tok_s": statistics.median(decode[name]),
               "chunks": statistics.median(chunks[name]), "ttft_all_ms": ttft[name], "decode_all": decode[name]}
        for name in streams
    }


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

    plain_cpu_buffers()  # the model in the plain CPU layout, as glmaas's engine loads it
    llm = llama_cpp.Llama(str(model), n_ctx=2048, n_threads=args.threads, n_threads_batch=args.threads, verbose=False)
    with glmaas_server(model, f"threads={args.threads}") as server:
        headers = {"Authorization": f"Bearer {server.api_key}"}
        with httpx.Client(base_url=server.base_url, headers=headers, timeout=300) as client:
            usage: dict = {}
            results = measure(
                {
                    "api": lambda n: api_chunks(client, server, n, args.max_tokens, usage),
                    "local": lambda n: inprocess_chunks(llm, n, args.max_tokens),
                },
                args.repeats,
            )
    llm.close()
    api, local = results["api"], results["local"]

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
