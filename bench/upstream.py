"""glmaas as a gateway in front of an upstream server, against the client calling the server
directly and against LiteLLM's proxy in front of the same server, in one run.

Two parts:

  stream   llama_cpp.server with the default GGUF. Streaming chat requests, one at a time, the
           systems alternating request by request: time to first token (TTFT, from sending the
           request to the first content chunk) and decode tokens/s (content chunks after the
           first, over the time from the first to the last; llama_cpp.server sends one token per
           chunk). Prints p50 TTFT and glmaas's added milliseconds, decode tokens/s as a ratio
           of direct, and how long the server in front waited for a core before the first token
           (its threads' run-queue time, from /proc/PID/task/*/schedstat): waiting that is the
           machine's, not the server's code.
  noop     the do-nothing upstream of bench/gateway.py (streaming when asked), under wrk on one
           pinned core: requests/s, server CPU ms per request, and from it requests/s per core,
           glmaas / LiteLLM.
  cpu      glmaas alone in front of the do-nothing upstream, requests sent one at a time: the
           server's CPU time (nanoseconds of its threads, from /proc/PID/task/*/schedstat) spent
           before the first content byte reached the client and in all, per streamed and per
           whole request. CPU time barely moves with what else the machine runs, so this part
           compares builds on a busy machine where wall-clock figures cannot.

The issue's targets: glmaas adds at most 1 ms p50 TTFT and keeps at least 0.98x the direct
decode tokens/s; at least 5x LiteLLM's requests/s per core on the no-op upstream.

    python bench/upstream.py [--parts stream,noop,cpu] [--systems glmaas,litellm] [--requests 20]
                             [--max-tokens 64] [--threads 1] [--pin] [--rounds 3] [--duration 5]
                             [--concurrency 1,8] [--cpu-requests 300]

`--pin` puts llama_cpp.server and the client on the core the gateways do not use in the stream
part too (the noop part always separates them so), so that a front never waits for its core
behind the upstream's decoding.

LiteLLM is installed on first use into bench/.venv-litellm (bench/gateway.py's). Needs wrk and
taskset for the noop part.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gateway as gw  # noqa: E402 - bench/gateway.py, beside this file

from glmaas.benchmarks import harness  # noqa: E402
from glmaas.benchmarks.servers import llama_cpp_server  # noqa: E402
from glmaas.engines.registry import DEFAULT_MODEL_ID, default_model_path  # noqa: E402

PROMPT = [{"role": "user", "content": "Write a short story about a lighthouse keeper."}]


def start_front(stack: ExitStack, work: Path, upstream_v1: str, model: str, upstream_model: str) -> gw.Target:
    """glmaas with one upstream model, an account with a balance, a price and a key."""
    store = ["--data-dir", str(work / f"glmaas-{model}")]
    cli = lambda *a: gw.glmaas_cli(*a, store=store)  # noqa: E731
    cli("accounts", "create", "bench")
    cli("accounts", "topup", "bench", "1000000")
    cli("prices", "set", model, "--input", str(gw.PRICE_IN), "--cached-input", str(gw.PRICE_CACHED),
        "--output", str(gw.PRICE_OUT))
    key = cli("keys", "create", "--account", "bench", "--rpm", str(gw.RPM), "--tpm", str(gw.TPM),
              "--concurrency", str(gw.CONCURRENCY)).strip().splitlines()[-1]
    try:
        server = harness.start_glmaas(work / f"glmaas-{model}", "--no-default-model", "--model",
                                      f"{model}=openai+{upstream_v1},model={upstream_model}", host=gw.HOST,
                                      log=work / f"glmaas-{model}.log", cwd=work, timeout=180,
                                      prefix=["taskset", "-c", gw.SERVER_CORE])
    except harness.ServerFailed as exc:
        sys.exit(str(exc))
    stack.callback(server.stop)
    return gw.Target("glmaas", f"{server.openai_url}/chat/completions", key, server.pid, store=store)


def start_litellm_for(stack: ExitStack, work: Path, upstream_v1: str, model: str, upstream_model: str) -> gw.Target:
    """LiteLLM's proxy (master-key mode) with one model in front of `upstream_v1`."""
    params = {"model": f"openai/{upstream_model}", "api_base": upstream_v1, "api_key": "unused",
              "input_cost_per_token": gw.PRICE_IN / 1e6, "output_cost_per_token": gw.PRICE_OUT / 1e6}
    config = work / f"litellm-{model}.json"
    config.write_text(json.dumps({"model_list": [{"model_name": model, "litellm_params": params}],
                                  "general_settings": {"master_key": gw.MASTER_KEY},
                                  "litellm_settings": {"telemetry": False}}))
    port = harness.free_port(gw.HOST)
    argv = ["taskset", "-c", gw.SERVER_CORE, str(gw.litellm_bin()), "--config", str(config),
            "--host", gw.HOST, "--port", str(port), "--num_workers", "1"]
    server = gw.serve(stack, f"litellm-{model}", argv, f"http://{gw.HOST}:{port}/health/liveliness", work,
                      env=gw.litellm_env())
    return gw.Target("litellm", f"http://{gw.HOST}:{port}/v1/chat/completions", gw.MASTER_KEY, server.pid)


# --- stream: TTFT and decode tokens/s through each system ------------------------------------


def one_stream(client: httpx.Client, t: gw.Target, model: str, max_tokens: int,
               at_first: Callable[[], None] = lambda: None) -> tuple[float, float | None, int]:
    """(TTFT ms, decode tokens/s or None when fewer than two tokens came, content chunks);
    `at_first` is called when the first content arrives."""
    headers = {"Authorization": f"Bearer {t.key}"} if t.key else {}
    body = {"model": model, "messages": PROMPT, "max_tokens": max_tokens, "temperature": 0, "stream": True}
    start = time.perf_counter()
    first = last = None
    chunks = 0
    with client.stream("POST", t.url, json=body, headers=headers) as r:
        if r.status_code != 200:
            sys.exit(f"{t.system}: HTTP {r.status_code}: {r.read()[:300]!r}")
        for line in r.iter_lines():
            if not line.startswith("data: {"):
                continue
            choices = json.loads(line[6:]).get("choices") or [{}]
            if choices[0].get("delta", {}).get("content"):
                last = time.perf_counter()
                if first is None:
                    first = last
                    at_first()
                chunks += 1
    if first is None:
        sys.exit(f"{t.system}: the stream carried no content")
    rate = (chunks - 1) / (last - first) if chunks > 1 and last > first else None
    return (first - start) * 1000, rate, chunks


def stream_part(args: argparse.Namespace, work: Path) -> list[str]:
    model = DEFAULT_MODEL_ID
    lines = []
    with ExitStack() as stack:
        llama = stack.enter_context(llama_cpp_server(default_model_path(), threads=args.threads))
        if args.pin:
            # As in the noop part: the gateways alone on their core, the upstream and the client
            # on the other, so that a front never waits behind the upstream's decoding.
            pin(llama.pid, int(gw.LOAD_CORE))
            os.sched_setaffinity(0, {int(gw.LOAD_CORE)})
        targets = [gw.Target("direct", f"{llama.base_url}/chat/completions", None, llama.pid)]
        if "glmaas" in args.systems:
            targets.append(start_front(stack, work, llama.base_url, model, model))
        if "litellm" in args.systems:
            targets.append(start_litellm_for(stack, work, llama.base_url, model, model))
        ttft: dict[str, list[float]] = {t.system: [] for t in targets}
        rate: dict[str, list[float]] = {t.system: [] for t in targets}
        waited: dict[str, list[float]] = {t.system: [] for t in targets}
        fronts = {t.system: python_pid(t.pid) for t in targets if t.system != "direct"}
        with httpx.Client(timeout=300) as client:
            for t in targets:
                one_stream(client, t, model, 4)  # warm each path once
            for n in range(args.requests):
                # Rotate the order so that no system always follows the same neighbour.
                for t in targets[n % len(targets):] + targets[:n % len(targets)]:
                    pid = fronts.get(t.system)
                    before = thread_wait_ns(pid) if pid else 0

                    def note_wait(system: str = t.system, pid: int | None = pid, before: int = before) -> None:
                        if pid:
                            waited[system].append((thread_wait_ns(pid) - before) / 1e6)

                    ms, tps, _ = one_stream(client, t, model, args.max_tokens, note_wait)
                    ttft[t.system].append(ms)
                    if tps is not None:
                        rate[t.system].append(tps)
    base_ttft = statistics.median(ttft["direct"])
    base_rate = statistics.median(rate["direct"]) if rate["direct"] else float("nan")
    lines.append(f"stream: llama_cpp.server ({model}, {args.threads} threads), {args.requests} requests per "
                 f"system, max_tokens {args.max_tokens}, temperature 0, load average {os.getloadavg()[0]:.2f}"
                 + (f"; llama_cpp.server and the client on core {gw.LOAD_CORE}" if args.pin else ""))
    lines.append("| system | p50 TTFT ms | added p50 ms | decode tok/s (p50) | of direct | front waited for a core "
                 "before the first token, ms (p50) |")
    lines.append("|---|---|---|---|---|---|")
    for system in ttft:
        p50 = statistics.median(ttft[system])
        tps = statistics.median(rate[system]) if rate[system] else float("nan")
        wait = f"{statistics.median(waited[system]):.2f}" if waited[system] else "-"
        lines.append(f"| {system} | {p50:.1f} | {p50 - base_ttft:+.1f} | {tps:.1f} | {tps / base_rate:.3f} | {wait} |")
    return lines


# --- noop: requests/s per core on a do-nothing upstream --------------------------------------


def noop_part(args: argparse.Namespace, work: Path) -> list[str]:
    concurrency = [int(c) for c in args.concurrency.split(",")]
    rounds: dict[tuple[str, int], list[gw.Phase]] = {}
    with ExitStack() as stack:
        upstream = gw.start_upstream(stack, "noop-upstream", work, gw.LOAD_CORE)
        upstream_v1 = upstream.url.removesuffix("/chat/completions")
        targets = []
        if "glmaas" in args.systems:
            targets.append(start_front(stack, work, upstream_v1, "mock", "mock"))
        if "litellm" in args.systems:
            targets.append(start_litellm_for(stack, work, upstream_v1, "mock", "mock"))
        for t in targets:
            gw.check_reply(t)
        for r in range(args.rounds):
            for c in concurrency:
                for t in targets[r % len(targets):] + targets[:r % len(targets)]:
                    rounds.setdefault((t.system, c), []).append(gw.measure(t, c, args.duration, args.warmup))
    phases = {key: gw.median_phase(ps) for key, ps in rounds.items()}
    lines = [f"noop: {args.rounds} rounds x wrk -c<c> -d{args.duration}s, servers pinned to core "
             f"{gw.SERVER_CORE}, the upstream and wrk on core {gw.LOAD_CORE}",
             "| system | c | req/s | CPU ms/req | req/s per core | p50 ms |", "|---|---|---|---|---|---|"]
    for (system, c), p in sorted(phases.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        lines.append(f"| {system} | {c} | {p.rps:.1f} | {p.cpu_ms:.2f} | {1000 / p.cpu_ms:.0f} | {p.p50_ms:.2f} |")
    for c in concurrency:
        if ("glmaas", c) in phases and ("litellm", c) in phases:
            ratio = phases[("litellm", c)].cpu_ms / phases[("glmaas", c)].cpu_ms
            lines.append(f"c={c}: glmaas / LiteLLM requests/s per core = {ratio:.2f}x")
    return lines


# --- cpu: server CPU time per request, before the first byte and in all ----------------------


def thread_cpu_ns(pid: int) -> int:
    """CPU nanoseconds of the live threads of process `pid` (what schedstat counts, at ns grain)."""
    return _schedstat(pid, 0)


def thread_wait_ns(pid: int) -> int:
    """Nanoseconds the live threads of process `pid` spent runnable but waiting for a core."""
    return _schedstat(pid, 1)


def _schedstat(pid: int, field: int) -> int:
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[field])
        except (OSError, IndexError, ValueError):
            continue  # a worker thread that just ended
    return total


def pin(pid: int, core: int) -> None:
    """Every thread of process `pid` on `core`."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        os.sched_setaffinity(int(task.name), {core})


def python_pid(pid: int) -> int:
    """The server's Python process: `pid` itself (python, or a console script such as `glmaas`
    or `litellm`), or the child a `taskset` prefix left behind it."""
    comm = Path(f"/proc/{pid}/comm").read_text().strip()
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return pid if comm.startswith("python") or not children else int(children[0])


def cpu_part(args: argparse.Namespace, work: Path) -> list[str]:
    n = args.cpu_requests
    lines = []
    work = work / "cpu"  # a store of its own: the other parts' glmaas has an account of the same name
    work.mkdir()
    with ExitStack() as stack:
        upstream = gw.start_upstream(stack, "noop-upstream", work, gw.LOAD_CORE)
        front = start_front(stack, work, upstream.url.removesuffix("/chat/completions"), "mock", "mock")
        pid = python_pid(front.pid)
        headers = {"Authorization": f"Bearer {front.key}"}
        load = [os.getloadavg()[0]]
        lines.append(f"cpu: glmaas in front of the do-nothing upstream, {n} requests of each kind one at a time "
                     f"(after {n // 10} unrecorded), server CPU from /proc/{{pid}}/task/*/schedstat")
        lines.append("| request | before first byte CPU ms (p50) | (mean) | CPU ms per request (mean) |")
        lines.append("|---|---|---|---|")
        with httpx.Client(timeout=30) as client:
            for streamed in (True, False):
                body = {**gw.BODY, "stream": streamed}
                first: list[float] = []
                marks = []
                for i in range(n // 10 + n):
                    start = thread_cpu_ns(pid)
                    with client.stream("POST", front.url, json=body, headers=headers) as r:
                        if r.status_code != 200:
                            sys.exit(f"glmaas: HTTP {r.status_code}: {r.read()[:300]!r}")
                        chunks = r.iter_raw()
                        next(chunks)
                        at_first = thread_cpu_ns(pid)
                        for _ in chunks:
                            pass
                    if i >= n // 10:
                        first.append((at_first - start) / 1e6)
                        marks.append(start)
                time.sleep(0.2)  # let the last settlement finish
                total = (thread_cpu_ns(pid) - marks[0]) / 1e6 / n
                load.append(os.getloadavg()[0])
                lines.append(f"| {'streamed' if streamed else 'whole'} | {statistics.median(first):.3f} | "
                             f"{statistics.fmean(first):.3f} | {total:.3f} |")
        lines.append(f"load average {min(load):.2f}-{max(load):.2f} during the part")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="stream,noop,cpu")
    parser.add_argument("--systems", default="glmaas,litellm", help="besides direct: glmaas, litellm")
    parser.add_argument("--requests", type=int, default=20, help="stream: requests per system")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="stream: llama_cpp.server threads")
    parser.add_argument("--pin", action="store_true",
                        help="stream: llama_cpp.server and the client on the core the gateways do not use")
    parser.add_argument("--rounds", type=int, default=3, help="noop: rounds (median)")
    parser.add_argument("--duration", type=int, default=5, help="noop: seconds of load per system and round")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--concurrency", default="1,8")
    parser.add_argument("--cpu-requests", type=int, default=300, help="cpu: requests of each kind")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (server logs)")
    args = parser.parse_args()
    args.systems = args.systems.split(",")
    work = Path(tempfile.mkdtemp(prefix="glmaas-upstream-bench-"))
    report = [f"glmaas upstream benchmark, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
              f"{os.cpu_count()} cores; work dir {work}"]
    try:
        if "stream" in args.parts:
            report += stream_part(args, work)
        if "noop" in args.parts:
            report += noop_part(args, work)
        if "cpu" in args.parts:
            report += cpu_part(args, work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print("\n".join(report))


if __name__ == "__main__":
    main()
