"""Load-test an OpenAI-compatible server with streaming chat completions, like `vllm bench serve`.

Requests go out at a fixed concurrency (a new one starts when one ends) or as Poisson arrivals
at `request_rate` per second (capped by `concurrency`). Each request records when its first and
every later content chunk arrived; from those come, per run:

  TTFT  time to first token: request sent → first content chunk
  TPOT  time per output token after the first: (E2E − TTFT) / (output tokens − 1), per request
  ITL   inter-token latency: the gap between successive content chunks, over all requests
  E2E   request sent → stream finished

as mean, p50 and p99 in milliseconds, plus request and output-token throughput over the run's
wall time, and goodput: requests per second that met every given SLO (`ttft`, `tpot`, `e2e` in ms;
`DEFAULT_SLO_MS` unless told otherwise).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx
import numpy as np

TOPICS = (
    "a lighthouse keeper", "the history of paper", "a robot learning to cook", "volcanoes",
    "a city under the sea", "how bridges stand", "a lost dog finding home", "the first computers",
    "winter in the mountains", "a market in the morning", "bees and flowers", "a train at night",
    "the moon landing", "a library that never closes", "rivers and deltas", "an old clock",
)


# What an interactive chat user tolerates on this 2-core machine: the first token within 2 s, then
# at least ~7 tokens/s.
DEFAULT_SLO_MS = {"ttft": 2000.0, "tpot": 150.0}


@dataclass(frozen=True)
class BenchConfig:
    base_url: str  # up to and including /v1
    model: str
    api_key: str = ""
    num_prompts: int = 32
    concurrency: int = 1
    request_rate: float = float("inf")  # requests per second; inf = all at once (up to concurrency)
    input_words: int = 32  # roughly the prompt length; each prompt differs by its topic
    max_tokens: int = 128
    temperature: float = 0.0
    seed: int = 0
    slo_ms: dict[str, float] = field(default_factory=dict)  # e.g. {"ttft": 500, "tpot": 50}
    timeout_s: float = 600.0
    extra_body: dict[str, Any] = field(default_factory=dict)  # more request fields, e.g. response_format


@dataclass
class RequestResult:
    ok: bool
    sent: float
    chunk_times: list[float] = field(default_factory=list)
    end: float = 0.0
    output_tokens: int = 0
    prompt_tokens: int = 0
    error: str = ""

    @property
    def ttft(self) -> float | None:
        return self.chunk_times[0] - self.sent if self.chunk_times else None

    @property
    def e2e(self) -> float:
        return self.end - self.sent

    @property
    def tpot(self) -> float | None:
        if self.output_tokens < 2 or not self.chunk_times:
            return None
        return (self.e2e - (self.chunk_times[0] - self.sent)) / (self.output_tokens - 1)

    @property
    def itls(self) -> list[float]:
        return [b - a for a, b in zip(self.chunk_times, self.chunk_times[1:])]


def make_prompt(index: int, words: int) -> str:
    """A story request of about `words` words; prompts differ from their first line on."""
    topic = TOPICS[index % len(TOPICS)]
    head = f"Request {index}. Write a long, detailed story about {topic}."
    filler = " Describe every place, person and sound with care, one scene after another."
    text = head
    while len(text.split()) < words:
        text += filler
    return " ".join(text.split()[: max(words, len(head.split()))])


def distribution(values_s: Sequence[float]) -> dict[str, float]:
    """mean, p50 and p99 of `values_s` (seconds), in milliseconds; zeros when empty."""
    if not values_s:
        return {"mean": 0.0, "p50": 0.0, "p99": 0.0}
    arr = np.asarray(values_s, dtype=np.float64) * 1000.0
    return {
        "mean": float(arr.mean()),
        "p50": float(np.percentile(arr, 50)),
        "p99": float(np.percentile(arr, 99)),
    }


def meets_slo(result: RequestResult, slo_ms: dict[str, float]) -> bool:
    """Whether one request met every SLO (ms); a missing measure (e.g. TPOT of one token) passes."""
    if not result.ok:
        return False
    measures = {"ttft": result.ttft, "tpot": result.tpot, "e2e": result.e2e}
    for key, limit in slo_ms.items():
        value = measures[key]
        if value is not None and value * 1000.0 > limit:
            return False
    return True


def summarize(results: Sequence[RequestResult], duration_s: float, slo_ms: dict[str, float]) -> dict:
    """Figures of one run, from its requests and its wall time."""
    done = [r for r in results if r.ok]
    out_tokens = sum(r.output_tokens for r in done)
    summary = {
        "completed": len(done),
        "failed": len(results) - len(done),
        "duration_s": duration_s,
        "total_output_tokens": out_tokens,
        "total_prompt_tokens": sum(r.prompt_tokens for r in done),
        "request_throughput": len(done) / duration_s if duration_s > 0 else 0.0,
        "output_throughput": out_tokens / duration_s if duration_s > 0 else 0.0,
        "ttft_ms": distribution([r.ttft for r in done if r.ttft is not None]),
        "tpot_ms": distribution([r.tpot for r in done if r.tpot is not None]),
        "itl_ms": distribution([x for r in done for x in r.itls]),
        "e2e_ms": distribution([r.e2e for r in done]),
    }
    if slo_ms:
        good = sum(1 for r in done if meets_slo(r, slo_ms))
        summary["goodput"] = good / duration_s if duration_s > 0 else 0.0
        summary["slo_ms"] = dict(slo_ms)
    errors = [r.error for r in results if not r.ok]
    if errors:
        summary["first_error"] = errors[0]
    return summary


async def send_request(client: httpx.AsyncClient, config: BenchConfig, prompt: str) -> RequestResult:
    """One streaming chat completion, timed chunk by chunk."""
    body = {
        "model": config.model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": config.max_tokens,
        "temperature": config.temperature,
        "stream": True,
        "stream_options": {"include_usage": True},
        **config.extra_body,
    }
    headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
    result = RequestResult(ok=False, sent=time.perf_counter())
    chunks = 0
    try:
        async with client.stream("POST", "/chat/completions", json=body, headers=headers) as resp:
            if resp.status_code != 200:
                result.error = f"HTTP {resp.status_code}: {(await resp.aread())[:200]!r}"
                result.end = time.perf_counter()
                return result
            async for line in resp.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                event = json.loads(data)
                if "error" in event:
                    result.error = str(event["error"])[:200]
                    break
                for choice in event.get("choices") or []:
                    if (choice.get("delta") or {}).get("content"):
                        result.chunk_times.append(time.perf_counter())
                        chunks += 1
                usage = event.get("usage")
                if usage:
                    result.output_tokens = int(usage.get("completion_tokens") or 0)
                    result.prompt_tokens = int(usage.get("prompt_tokens") or 0)
        result.ok = not result.error
    except (httpx.HTTPError, json.JSONDecodeError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    result.end = time.perf_counter()
    if result.output_tokens == 0:
        result.output_tokens = chunks  # servers without usage in streams: one token per chunk
    return result


def arrival_gaps(n: int, rate: float, seed: int) -> list[float]:
    """Seconds to wait before each of `n` requests: a Poisson process at `rate` per second
    (exponential gaps of mean 1/rate, the first at 0), or no waits at all when `rate` is inf."""
    if rate == float("inf"):
        return [0.0] * n
    rng = random.Random(seed)
    return [0.0] + [rng.expovariate(rate) for _ in range(n - 1)]


async def run_requests(config: BenchConfig) -> tuple[list[RequestResult], float]:
    """Send `num_prompts` requests per `config` after one warm-up; the results and the wall time
    from the first request sent to the last one finished."""
    limit = asyncio.Semaphore(config.concurrency)
    limits = httpx.Limits(max_connections=config.concurrency + 4, max_keepalive_connections=config.concurrency + 4)
    async with httpx.AsyncClient(base_url=config.base_url, timeout=config.timeout_s, limits=limits) as client:
        await send_request(client, config, make_prompt(10_000, config.input_words))  # warm-up

        async def one(i: int) -> RequestResult:
            async with limit:
                return await send_request(client, config, make_prompt(i, config.input_words))

        tasks = []
        start = time.perf_counter()
        for i, gap in enumerate(arrival_gaps(config.num_prompts, config.request_rate, config.seed)):
            if gap:
                await asyncio.sleep(gap)
            tasks.append(asyncio.create_task(one(i)))
        results = await asyncio.gather(*tasks)
        duration = time.perf_counter() - start
    return list(results), duration


def with_settings(config: BenchConfig, summary: dict) -> dict:
    """`summary` preceded by the settings that produced it (the API key left out)."""
    settings = asdict(config)
    settings.pop("api_key")
    settings["request_rate"] = str(config.request_rate)
    return {"settings": settings, **summary}


async def run_benchmark(config: BenchConfig) -> dict:
    """Send `num_prompts` requests per `config`; return the summary plus the settings used."""
    results, duration = await run_requests(config)
    return with_settings(config, summarize(results, duration, config.slo_ms))


def format_summary(name: str, summary: dict) -> str:
    """A few human lines for one run."""
    s = summary
    lines = [
        (
            f"== {name}: concurrency {s['settings']['concurrency']}, rate {s['settings']['request_rate']}/s, "
            f"{s['completed']} ok / {s['failed']} failed in {s['duration_s']:.1f} s"
        ),
        f"   output {s['output_throughput']:.1f} tok/s, {s['request_throughput']:.2f} req/s"
        + (f", goodput {s['goodput']:.2f} req/s" if "goodput" in s else ""),
    ]
    for key in ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms"):
        d = s[key]
        lines.append(f"   {key[:-3].upper():5s} mean {d['mean']:8.1f}  p50 {d['p50']:8.1f}  p99 {d['p99']:8.1f} ms")
    if "first_error" in s:
        lines.append(f"   first error: {s['first_error']}")
    return "\n".join(lines)


def plot_sweep(runs: dict[str, list[dict]], path: str, title: str = "") -> None:
    """Output throughput, TTFT and TPOT (p50 solid, p99 dashed) against concurrency, one line per
    server in `runs` (name → summaries of a sweep); against the arrival rate, with goodput in the
    first panel, when the sweep is over request rates."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_rate = len({s["settings"]["request_rate"] for ss in runs.values() for s in ss}) > 1
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for name, summaries in runs.items():
        xs = [float(s["settings"]["request_rate"]) if by_rate else s["settings"]["concurrency"] for s in summaries]
        first = [s["goodput"] for s in summaries] if by_rate else [s["output_throughput"] for s in summaries]
        (line,) = axes[0].plot(xs, first, marker="o", label=name)
        for ax, key in ((axes[1], "ttft_ms"), (axes[2], "tpot_ms")):
            ax.plot(xs, [s[key]["p50"] for s in summaries], marker="o", color=line.get_color(), label=f"{name} p50")
            ax.plot(xs, [s[key]["p99"] for s in summaries], marker="x", linestyle="--", color=line.get_color(), label=f"{name} p99")
    first_label = "goodput (requests/s within the SLO)" if by_rate else "output tokens/s"
    for ax, label in zip(axes, (first_label, "TTFT (ms)", "TPOT (ms)")):
        ax.set_xlabel("request rate (requests/s, Poisson)" if by_rate else "concurrency")
        ax.set_ylabel(label)
        if not by_rate:
            ax.set_xscale("log", base=2)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
