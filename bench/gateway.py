"""Gateway hot path: glmaas (mock engine) against LiteLLM's proxy (mock upstream), same load.

One run measures small non-streaming chat completions (16 output tokens) under wrk (keep-alive,
fixed concurrency) through:

  upstream         the mock upstream called directly, on the gateways' core: the baseline
  glmaas sqlite    glmaas: key auth, in-process limits (rpm/tpm/concurrency), balance hold and
                   settlement in the ledger, usage record; SQLite store
  glmaas pg+redis  the same on PostgreSQL (a fresh database, dropped after) with Redis limits
  litellm          LiteLLM proxy, master-key mode, per-token prices, in front of the mock upstream
  litellm+redis    the same with Redis usage-based routing (rpm/tpm per deployment)

and prints requests/s, server CPU ms per request (utime+stime of the server's process tree) and
from it requests/s per core (1000 / CPU ms: what one saturated core would serve), latency p50/p99,
added p50 (p50 minus the upstream's p50 at the same concurrency), the CPU that PostgreSQL and Redis
spent per request, the steps of glmaas's books per round trip on PostgreSQL + Redis (from its
/metrics: group commit), and the glmaas / LiteLLM ratios. Every server under test is started once and
pinned to core 0; wrk, and the mock upstream that LiteLLM calls, share core 1. The systems are
measured in rounds, in a rotating order, so that a neighbour's load hits them alike; each figure is
the median over rounds, printed with the load average and the share of core 0 that other processes
took.

LiteLLM's database mode (virtual keys, stored spend) needs Prisma engine binaries downloaded on
first run, which this machine cannot fetch: it is measured in master-key mode.

    python bench/gateway.py [--rounds 3] [--duration 5] [--concurrency 1,8] [--json out.json]
    python bench/gateway.py --systems glmaas --baseline HEAD~1    # this tree against a commit

`--baseline REV` adds "glmaas@REV": the same SQLite set-up served from a checkout of REV (a
detached git worktree in the work dir), measured in the same rounds, and prints the CPU per
request of this tree against it; with glmaas+pg+redis among the systems, also "pg+redis@REV",
REV on its own fresh PostgreSQL database and Redis database.

Needs wrk (apt-get install wrk) and taskset. LiteLLM is installed on first use into its own
virtualenv, bench/.venv-litellm.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from gateway_report import print_report  # bench/gateway_report.py, beside this file

try:
    from glmaas.benchmarks import harness
except ImportError:
    sys.exit("run this with the project's Python: .venv/bin/python bench/gateway.py")

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent / "gateway"
LITELLM_VERSION = "1.108.0"
# pip's litellm[proxy] brings uvicorn without httptools, so it would parse HTTP with h11 in pure
# Python; glmaas's uvicorn[standard] has httptools. Both get the same HTTP stack.
LITELLM_EXTRAS = ("httptools==0.9.0",)
LITELLM_VENV = ROOT / "bench" / ".venv-litellm"
SERVER_CORE, LOAD_CORE = "0", "1"
HOST = "127.0.0.1"
PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"
REDIS = "redis://127.0.0.1:6379"
GLMAAS_REDIS_DB, LITELLM_REDIS_DB, BASELINE_REDIS_DB = 11, 12, 13
MASTER_KEY = "sk-bench-master-key"
SYSTEMS = ("glmaas", "glmaas+pg+redis", "litellm", "litellm+redis")

# One request body for every system: a short chat turn, 16 output tokens, no streaming.
BODY = {"model": "mock", "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 16}
# Prices per million tokens, the same on both sides: input, cached input, output.
PRICE_IN, PRICE_CACHED, PRICE_OUT = 1.0, 0.1, 2.0
# Limits far above what one core can reach, so that they are checked but never refuse.
RPM, TPM, CONCURRENCY = 10_000_000, 1_000_000_000, 1024
# The over-limit probe: a key (glmaas) or a deployment (LiteLLM) allowed PROBE_RPM requests/min.
PROBE_RPM, PROBE_TIMEOUT_S = 3, 5.0
TICK_MS = 1000 / os.sysconf("SC_CLK_TCK")


@dataclass
class Phase:
    """One system at one concurrency: one round, or the median of several."""

    system: str
    concurrency: int
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu_ms: float  # server process tree, per request
    store_cpu_ms: float  # PostgreSQL + Redis processes, per request
    core0_other_pct: float  # core 0 busy with processes other than the server
    load1: float
    warmup_requests: int = 0
    added_p50_ms: float | None = None
    # glmaas on PostgreSQL + Redis: steps of the books per round trip over the phase (its
    # /metrics, group commit); None where the server does not count them.
    mean_batch: float | None = None


@dataclass
class Target:
    """A running system and what the run needs to load and check it."""

    system: str
    url: str
    key: str | None
    pid: int
    probe_key: str | None = None  # allowed PROBE_RPM requests per minute ...
    probe_model: str = "mock"  # ... on this model
    store: list[str] = field(default_factory=list)  # glmaas: options naming its data dir / db
    metrics: tuple[str, str] | None = None  # glmaas: its /metrics URL and admin token


# --- processes and CPU accounting -------------------------------------------------------------


def _stats() -> dict[int, tuple[str, int, int]]:
    """pid -> (comm, ppid, utime+stime+cutime+cstime in ticks) of every process."""
    out = {}
    for entry in os.listdir("/proc"):
        try:
            raw = Path(f"/proc/{entry}/stat").read_text() if entry.isdigit() else ""
        except OSError:
            continue
        if raw:
            fields = raw[raw.rindex(")") + 2 :].split()
            comm = raw[raw.index("(") + 1 : raw.rindex(")")]
            out[int(entry)] = (comm, int(fields[1]), sum(int(f) for f in fields[11:15]))
    return out


def tree_ticks(root: int, stats: dict[int, tuple[str, int, int]]) -> int:
    """CPU ticks of a process and its descendants (children's reaped time included)."""
    pids, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, (_, ppid, _) in stats.items() if ppid == parent and pid not in pids]
        pids.update(children)
        frontier += children
    return sum(stats[p][2] for p in pids if p in stats)


def store_ticks(stats: dict[int, tuple[str, int, int]]) -> int:
    """CPU ticks of every PostgreSQL and Redis server process on the machine."""
    return sum(t for comm, _, t in stats.values() if comm in ("postgres", "redis-server"))


def core_ticks(core: str) -> tuple[int, int]:
    """(ticks running processes, all ticks) of one core since boot. Interrupt time is left out:
    the loopback traffic of the run itself is handled there."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{core} "):
            v = [int(x) for x in line.split()[1:]]
            return v[0] + v[1] + v[2], sum(v)
    raise RuntimeError(f"no cpu{core} in /proc/stat")


def serve(stack: ExitStack, name: str, argv: list[str], health: str, workdir: Path,
          env: dict | None = None) -> harness.ServerProcess:
    """Start a server, logging to `workdir/NAME.log`, and wait until `health` answers 200; it stops
    when `stack` closes. A server that does not come up ends the run with the end of its log."""
    server = harness.ServerProcess(name, argv, ready_url=health, log=workdir / f"{name}.log", env=env, cwd=workdir)
    stack.enter_context(server.start())
    try:
        server.wait_ready(timeout=180)
    except harness.ServerFailed as exc:
        sys.exit(str(exc))
    return server


# --- requests and load ------------------------------------------------------------------------


def post(url: str, key: str | None, model: str = "mock", timeout: float = 30) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(url, json.dumps({**BODY, "model": model}).encode(), headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def check_reply(t: Target) -> tuple[int, int]:
    """One request by hand: the reply must be a completion with usage, or the run stops."""
    status, body = post(t.url, t.key)
    try:
        content, usage = body["choices"][0]["message"]["content"], body["usage"]
    except (KeyError, IndexError, TypeError):
        content, usage = None, None
    if status != 200 or not content or not usage:
        sys.exit(f"{t.system}: unexpected reply {status}: {json.dumps(body)[:500]}")
    print(f"  {t.system}: 200, {content!r}, usage {usage['prompt_tokens']}+{usage['completion_tokens']}")
    return usage["prompt_tokens"], usage["completion_tokens"]


def probe_rpm_limit(t: Target) -> str:
    """Requests one after another on a key/model allowed PROBE_RPM per minute, until one is not
    answered 200 or not within PROBE_TIMEOUT_S: what happened to that one."""
    for n in range(PROBE_RPM + 3):
        start = time.monotonic()
        try:
            status, _ = post(t.url, t.probe_key, t.probe_model, timeout=PROBE_TIMEOUT_S)
        except TimeoutError:
            return (f"{t.system}: rpm={PROBE_RPM}; {n} answered 200, then request {n + 1} got no "
                    f"answer within {PROBE_TIMEOUT_S:g} s (held, not refused)")
        if status != 200:
            return (f"{t.system}: rpm={PROBE_RPM}; {n} answered 200, then request {n + 1} got "
                    f"{status} in {(time.monotonic() - start) * 1000:.1f} ms")
    return f"{t.system}: rpm={PROBE_RPM}; all {PROBE_RPM + 3} answered 200 (limit not applied)"


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[unit]


def wrk(t: Target, concurrency: int, seconds: int) -> dict:
    argv = ["taskset", "-c", LOAD_CORE, "wrk", "-t1", f"-c{concurrency}", f"-d{seconds}s",
            "--timeout", "5s", "--latency", "-s", str(HERE / "post.lua"),
            "-H", "Content-Type: application/json", t.url]
    if t.key:
        argv[-1:-1] = ["-H", f"Authorization: Bearer {t.key}"]
    env = {**os.environ, "BENCH_BODY": json.dumps(BODY)}
    out = subprocess.run(argv, env=env, capture_output=True, text=True, check=True).stdout
    unit = r"([\d.]+)(us|ms|s|m)"
    lat = {p: _ms(v, u) for p, v, u in re.findall(rf"^\s+(50|99)%\s+{unit}\s*$", out, re.M)}
    done = re.search(rf"(\d+) requests in {unit}", out)
    if done is None or len(lat) != 2:
        sys.exit(f"cannot read wrk's output:\n{out}")
    errors = sum(int(x) for x in re.findall(r"Non-2xx or 3xx responses: (\d+)", out))
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out):
        errors += sum(int(x) for x in m.groups())
    return {"requests": int(done.group(1)), "seconds": _ms(*done.group(2, 3)) / 1000,
            "p50": lat["50"], "p99": lat["99"], "errors": errors}


def books_round_trips(t: Target) -> tuple[float, float] | None:
    """(steps, batches) of the books so far, from the server's /metrics; None where it does not
    count them (SQLite, or a tree from before group commit)."""
    if t.metrics is None:
        return None
    url, token = t.metrics
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            text = response.read().decode()
    except urllib.error.HTTPError as exc:
        if exc.code == 404:  # a tree from before /metrics
            return None
        raise
    totals = {"steps": 0.0, "batches": 0.0}
    for name, value in re.findall(r"^glmaas_books_(steps|batches)_total\{[^}]*\} (\S+)$", text, re.M):
        totals[name] += float(value)
    return (totals["steps"], totals["batches"]) if totals["batches"] else None


def measure(t: Target, concurrency: int, seconds: int, warmup: int) -> Phase:
    """One round: an unrecorded warm-up, then `seconds` of load with CPU accounting around it."""
    warm = wrk(t, concurrency, warmup)["requests"] if warmup else 0
    load1 = os.getloadavg()[0]
    books0 = books_round_trips(t)  # outside the CPU accounting: a scrape is not a request
    before, (busy0, total0) = _stats(), core_ticks(SERVER_CORE)
    r = wrk(t, concurrency, seconds)
    after, (busy1, total1) = _stats(), core_ticks(SERVER_CORE)
    books1 = books_round_trips(t)
    n = max(r["requests"], 1)
    cpu = tree_ticks(t.pid, after) - tree_ticks(t.pid, before)
    phase = Phase(
        system=t.system, concurrency=concurrency, requests=r["requests"], rps=r["requests"] / r["seconds"],
        p50_ms=r["p50"], p99_ms=r["p99"], errors=r["errors"], cpu_ms=cpu * TICK_MS / n,
        store_cpu_ms=(store_ticks(after) - store_ticks(before)) * TICK_MS / n,
        core0_other_pct=100.0 * max(busy1 - busy0 - cpu, 0) / max(total1 - total0, 1), load1=load1,
        warmup_requests=warm,
    )
    if books0 and books1 and books1[1] > books0[1]:
        phase.mean_batch = (books1[0] - books0[0]) / (books1[1] - books0[1])
    batch = "" if phase.mean_batch is None else f"  books {phase.mean_batch:.1f} steps/round trip"
    print(f"  {t.system:16} c={concurrency:<3} {phase.rps:8.1f} req/s  cpu {phase.cpu_ms:6.2f} ms/req  "
          f"p50 {phase.p50_ms:7.2f} ms  p99 {phase.p99_ms:7.2f} ms  errors {phase.errors}  "
          f"load {load1:.2f}  core0 other {phase.core0_other_pct:.0f}%{batch}", flush=True)
    return phase


def median_phase(rounds: list[Phase]) -> Phase:
    """The median of each figure over rounds; requests, warm-ups and errors are summed."""
    med = {k: statistics.median(getattr(p, k) for p in rounds)
           for k in ("rps", "p50_ms", "p99_ms", "cpu_ms", "store_cpu_ms", "core0_other_pct", "load1")}
    batches = [p.mean_batch for p in rounds if p.mean_batch is not None]
    return Phase(system=rounds[0].system, concurrency=rounds[0].concurrency,
                 requests=sum(p.requests for p in rounds), errors=sum(p.errors for p in rounds),
                 warmup_requests=sum(p.warmup_requests for p in rounds),
                 mean_batch=statistics.median(batches) if batches else None, **med)


# --- the systems -------------------------------------------------------------------------------


def glmaas_cli(*args: str, store: list[str], tree: Path = ROOT) -> str:
    argv = [sys.executable, "-m", "glmaas", *args, *store]
    done = subprocess.run(argv, cwd=tree, capture_output=True, text=True, env=tree_env(tree))
    if done.returncode != 0:
        sys.exit(f"glmaas {' '.join(args)} failed:\n{done.stdout}{done.stderr}")
    return done.stdout


def tree_env(tree: Path) -> dict[str, str] | None:
    """The environment that runs glmaas from `tree` rather than the installed package."""
    return None if tree == ROOT else {**os.environ, "PYTHONPATH": str(tree)}


@contextmanager
def checkout(rev: str, work: Path):
    """A detached worktree of `rev`, removed afterwards."""
    tree = work / f"tree-{rev.replace('/', '-').replace('~', '-').replace('^', '-')}"
    subprocess.run(["git", "worktree", "add", "--detach", str(tree), rev], cwd=ROOT, check=True,
                   capture_output=True)
    try:
        yield tree
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, capture_output=True)


def start_glmaas(stack: ExitStack, system: str, work: Path, database_url: str | None,
                 redis_url: str | None, tree: Path = ROOT) -> Target:
    """An account with a balance and a price for the model; a key with limits far above the load
    and one allowed PROBE_RPM requests per minute; then the server (from `tree`)."""
    name = system.replace(" ", "-").replace("+", "-").replace("@", "-")
    database = ["--database-url", database_url] if database_url else []
    store = ["--data-dir", str(work / name), *database]

    def cli(*args: str) -> str:
        return glmaas_cli(*args, store=store, tree=tree)

    cli("accounts", "create", "bench")
    cli("accounts", "topup", "bench", "1000000")
    cli("prices", "set", "mock", "--input", str(PRICE_IN), "--cached-input", str(PRICE_CACHED),
        "--output", str(PRICE_OUT))
    key = cli("keys", "create", "--account", "bench", "--name", "bench", "--rpm", str(RPM),
              "--tpm", str(TPM), "--concurrency", str(CONCURRENCY))
    probe_key = cli("keys", "create", "--account", "bench", "--name", "limited", "--rpm", str(PROBE_RPM))
    args = ["--no-default-model", "--model", "mock=mock", *database]
    if redis_url:
        args += ["--redis-url", redis_url]
    try:
        server = harness.start_glmaas(work / name, *args, env=tree_env(tree), host=HOST, log=work / f"{name}.log",
                                      cwd=work, prefix=["taskset", "-c", SERVER_CORE], timeout=180)
    except harness.ServerFailed as exc:
        sys.exit(str(exc))
    stack.callback(server.stop)
    token = (work / name / "admin.token").read_text().strip()
    return Target(system, f"{server.openai_url}/chat/completions", key.strip().splitlines()[-1],
                  server.pid, probe_key.strip().splitlines()[-1], "mock", store,
                  (f"{server.base_url}/metrics", token))


def check_books(t: Target, phases: list[Phase], price_micro: float) -> str:
    """After the load: every answered request settled once, at its price, and nothing held.
    wrk counts only the answers it read; up to `concurrency` more may finish at each of its stops."""
    sent = 1 + sum(p.requests + p.warmup_requests for p in phases)
    in_flight = sum(p.concurrency * (2 if p.warmup_requests else 1) for p in phases)
    usage = json.loads(glmaas_cli("usage", "--format", "json", store=t.store))
    row = next((r for r in usage if r["key"] == t.key.split(".")[0]), {"requests": 0, "cost_micro": 0})
    held = re.search(r"held by open requests: (\d+)", glmaas_cli("accounts", "show", "bench", store=t.store))
    n, cost = row["requests"], row["cost_micro"]
    ok = sent <= n <= sent + in_flight and cost == round(n * price_micro) and held and held.group(1) == "0"
    return (f"{t.system}: {n} requests settled ({sent} answered + up to {in_flight} in flight at "
            f"wrk's stops), charged {cost} micro-units = {n} x {price_micro:g}, "
            f"{held.group(1) if held else '?'} held: {'books balance' if ok else 'MISMATCH'}")


@contextmanager
def postgres_database(suffix: str = ""):
    """A fresh PostgreSQL database for the run, dropped afterwards; yields its SQLAlchemy URL."""
    import psycopg

    name = f"glmaas_bench_{os.getpid()}{'_' + suffix if suffix else ''}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {name}")
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def litellm_bin() -> Path:
    """The `litellm` command of bench/.venv-litellm, installed there on first use."""
    exe, stamp = LITELLM_VENV / "bin" / "litellm", LITELLM_VENV / ".installed"
    wanted = " ".join((f"litellm[proxy]=={LITELLM_VERSION}", *LITELLM_EXTRAS))
    if not stamp.exists() or stamp.read_text() != wanted:
        print(f"installing {wanted} into {LITELLM_VENV} (first run only)", flush=True)
        if not (LITELLM_VENV / "bin" / "pip").exists():
            subprocess.run(["python3", "-m", "venv", str(LITELLM_VENV)], check=True)
        subprocess.run([str(LITELLM_VENV / "bin" / "pip"), "install", "-q", *wanted.split()], check=True)
        stamp.write_text(wanted)
    return exe


def litellm_config(upstream_url: str, with_redis: bool) -> dict:
    params = {
        "model": "openai/mock",
        "api_base": upstream_url.removesuffix("/chat/completions"),
        "api_key": "unused",
        "input_cost_per_token": round(PRICE_IN / 1e6, 15),
        "cache_read_input_token_cost": round(PRICE_CACHED / 1e6, 15),
        "output_cost_per_token": round(PRICE_OUT / 1e6, 15),
    }
    config: dict = {
        "model_list": [
            {"model_name": "mock", "litellm_params": {**params, "rpm": RPM, "tpm": TPM}},
            {"model_name": "mock-limited", "litellm_params": {**params, "rpm": PROBE_RPM, "tpm": TPM}},
        ],
        "general_settings": {"master_key": MASTER_KEY},
        "litellm_settings": {"telemetry": False, "set_verbose": False},
    }
    if with_redis:
        config["router_settings"] = {"routing_strategy": "usage-based-routing-v2",
                                     "redis_url": f"{REDIS}/{LITELLM_REDIS_DB}"}
    return config


def litellm_env() -> dict:
    """An environment in which the proxy starts offline and talks to 127.0.0.1 only."""
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")
           and not k.startswith(("OPENAI_", "LITELLM_", "DATABASE_URL", "REDIS_"))}
    env.update({"LITELLM_TELEMETRY": "False", "LITELLM_LOCAL_MODEL_COST_MAP": "True",
                "LITELLM_LOG": "ERROR", "DISABLE_ADMIN_UI": "True", "NO_DOCS": "True",
                "HF_HUB_OFFLINE": "1", "NO_PROXY": "*"})
    return env


def start_upstream(stack: ExitStack, name: str, work: Path, core: str) -> Target:
    port = harness.free_port(HOST)
    argv = ["taskset", "-c", core, sys.executable, str(HERE / "upstream.py"), "--port", str(port)]
    server = serve(stack, name, argv, f"http://{HOST}:{port}/v1/models", work)
    return Target(name, f"http://{HOST}:{port}/v1/chat/completions", None, server.pid)


def start_litellm(stack: ExitStack, system: str, work: Path, upstream_url: str, with_redis: bool) -> Target:
    name = system.replace("+", "-")
    config = work / f"{name}.json"  # YAML is a superset of JSON
    config.write_text(json.dumps(litellm_config(upstream_url, with_redis), indent=2))
    port = harness.free_port(HOST)
    argv = ["taskset", "-c", SERVER_CORE, str(litellm_bin()), "--config", str(config),
            "--host", HOST, "--port", str(port), "--num_workers", "1"]
    server = serve(stack, name, argv, f"http://{HOST}:{port}/health/liveliness", work, env=litellm_env())
    return Target(system, f"http://{HOST}:{port}/v1/chat/completions", MASTER_KEY, server.pid,
                  MASTER_KEY, "mock-limited")


# --- report ------------------------------------------------------------------------------------


def environment(args: argparse.Namespace) -> dict[str, str]:
    def sh(*argv: str) -> str:
        done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
        return (done.stdout or done.stderr).strip()

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "?")
    dirty = " + uncommitted changes in glmaas/" if sh("git", "status", "--porcelain", "--", "glmaas") else ""
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "glmaas": sh("git", "log", "-1", "--format=%h %s", "--", "glmaas") + dirty,
        "litellm": f"{LITELLM_VERSION} (litellm[proxy], master-key mode, no database)",
        "wrk": sh("wrk", "-v").splitlines()[0].split(" [")[0],
        "python": sys.version.split()[0],
        "cpu": f"{cpu}, {os.cpu_count()} cores",
        "load": (f"{args.rounds} rounds x (wrk -t1 -c<c> -d{args.duration}s --latency after a "
                 f"{args.warmup} s warm-up), systems in rotating order; servers and the baseline upstream "
                 f"on core {SERVER_CORE}, wrk + LiteLLM's mock upstream on core {LOAD_CORE}"),
        "request": f"POST /v1/chat/completions {json.dumps(BODY)}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds over all systems (median)")
    parser.add_argument("--duration", type=int, default=5, help="seconds of load per system and round")
    parser.add_argument("--warmup", type=int, default=1, help="seconds of unrecorded load first (0: none)")
    parser.add_argument("--concurrency", default="1,8", help="comma-separated connection counts")
    parser.add_argument("--systems", default=",".join(SYSTEMS),
                        help=f"comma-separated, from {','.join(SYSTEMS)} (the upstream always runs)")
    parser.add_argument("--wait-load", type=float, metavar="L",
                        help="first wait (at most 10 minutes) until the 1-minute load average is below L")
    parser.add_argument("--baseline", metavar="REV",
                        help="also measure glmaas at this git revision (SQLite), in the same rounds")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (server logs)")
    args = parser.parse_args()
    concurrency = [int(c) for c in args.concurrency.split(",")]
    systems = args.systems.split(",")
    if unknown := set(systems) - set(SYSTEMS):
        parser.error(f"unknown systems: {', '.join(sorted(unknown))}")
    for tool, hint in (("wrk", "apt-get install -y wrk"), ("taskset", "apt-get install -y util-linux")):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is missing; install it: {hint}")
    if "litellm" in systems or "litellm+redis" in systems:
        litellm_bin()

    if args.wait_load is not None:
        deadline = time.monotonic() + 600
        while os.getloadavg()[0] >= args.wait_load and time.monotonic() < deadline:
            print(f"load average {os.getloadavg()[0]:.2f} >= {args.wait_load:g}; waiting", flush=True)
            time.sleep(15)
    env = environment(args)
    work = Path(tempfile.mkdtemp(prefix="glmaas-gateway-bench-"))
    print(f"load average {os.getloadavg()[0]:.2f}; starting the servers (work dir {work})", flush=True)
    rounds: dict[tuple[str, int], list[Phase]] = {}
    checks: list[str] = []
    try:
        with ExitStack() as stack:
            targets = [start_upstream(stack, "upstream", work, SERVER_CORE)]
            # LiteLLM's own upstream runs on the load core, so that it does not share the proxy's.
            backend = start_upstream(stack, "upstream-for-litellm", work, LOAD_CORE).url
            if "glmaas" in systems:
                targets.append(start_glmaas(stack, "glmaas sqlite", work, None, None))
            if args.baseline:
                tree = stack.enter_context(checkout(args.baseline, work))
                targets.append(start_glmaas(stack, f"glmaas@{args.baseline}", work, None, None, tree))
            if "glmaas+pg+redis" in systems:
                database_url = stack.enter_context(postgres_database())
                targets.append(start_glmaas(stack, "glmaas pg+redis", work, database_url,
                                            f"{REDIS}/{GLMAAS_REDIS_DB}"))
                if args.baseline:
                    database_url = stack.enter_context(postgres_database("baseline"))
                    targets.append(start_glmaas(stack, f"pg+redis@{args.baseline}", work, database_url,
                                                f"{REDIS}/{BASELINE_REDIS_DB}", tree))
            if "litellm" in systems:
                targets.append(start_litellm(stack, "litellm", work, backend, with_redis=False))
            if "litellm+redis" in systems:
                targets.append(start_litellm(stack, "litellm+redis", work, backend, with_redis=True))
            usage = {t.system: check_reply(t) for t in targets}
            for r in range(args.rounds):
                print(f"round {r + 1}/{args.rounds}, load average {os.getloadavg()[0]:.2f}", flush=True)
                order = targets[r % len(targets):] + targets[: r % len(targets)]
                for c in concurrency:
                    for t in order:
                        rounds.setdefault((t.system, c), []).append(measure(t, c, args.duration, args.warmup))
            for t in targets[1:]:
                checks.append(probe_rpm_limit(t))
                if t.store:
                    prompt, completion = usage[t.system]
                    phases = [p for (s, _), ps in rounds.items() if s == t.system for p in ps]
                    checks.append(check_books(t, phases, prompt * PRICE_IN + completion * PRICE_OUT))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    order = ["upstream", "glmaas sqlite", f"glmaas@{args.baseline}", "glmaas pg+redis",
             f"pg+redis@{args.baseline}", "litellm", "litellm+redis"]
    phases = sorted((median_phase(ps) for ps in rounds.values()),
                    key=lambda p: (order.index(p.system), p.concurrency))
    base = {p.concurrency: p.p50_ms for p in phases if p.system == "upstream"}
    for p in phases:
        if p.system != "upstream":
            p.added_p50_ms = p.p50_ms - base[p.concurrency]
    print_report(phases, checks, env, concurrency, args.baseline)
    if args.json:
        args.json.write_text(json.dumps({"environment": env, "phases": [asdict(p) for p in phases],
                                         "rounds": [asdict(p) for ps in rounds.values() for p in ps],
                                         "checks": checks}, indent=2))


if __name__ == "__main__":
    main()
