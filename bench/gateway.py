"""Gateway hot path: glmaas (mock engine) against LiteLLM's proxy (mock upstream), same load.

One run measures, for small non-streaming chat completions (16 output tokens) with auth, limits,
hold and settle on, at each concurrency (wrk, keep-alive):

  upstream        the mock upstream called directly: the baseline latency
  glmaas sqlite   glmaas, SQLite store, in-process limits
  glmaas pg+redis glmaas, PostgreSQL store (a fresh database, dropped after), Redis limits
  litellm         LiteLLM proxy, master-key mode, per-token prices, in front of the mock upstream
  litellm+redis   the same with Redis usage-based routing (rpm/tpm per deployment)

and prints requests/s, server CPU ms per request (utime+stime of the server's process tree),
latency p50/p99, added p50 (system p50 - upstream p50 at the same concurrency), the CPU that
PostgreSQL and Redis spent per request, and the glmaas / LiteLLM ratios. The gateway under test
is pinned to core 0; wrk and the mock upstream share core 1. The load average and how busy core 0
was with other processes during each phase are printed next to the figures.

LiteLLM's database mode (virtual keys, stored spend) needs Prisma engine binaries downloaded on
first run, which this machine cannot fetch; it is measured in master-key mode.

    python bench/gateway.py [--duration 10] [--concurrency 1,8] [--skip-litellm] [--json out.json]

Needs wrk (apt-get install wrk) and taskset. LiteLLM is installed on first use into its own
virtualenv, bench/.venv-litellm.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent / "gateway"
LITELLM_VERSION = "1.108.0"
LITELLM_VENV = ROOT / "bench" / ".venv-litellm"
SERVER_CORE, LOAD_CORE = "0", "1"
HOST = "127.0.0.1"
PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"
REDIS = "redis://127.0.0.1:6379"
GLMAAS_REDIS_DB, LITELLM_REDIS_DB = 11, 12
MASTER_KEY = "sk-bench-master-key"

# One request body for every system: a short chat turn, 16 output tokens, no streaming.
BODY = {"model": "mock", "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 16}
# Prices per million tokens, the same on both sides: input, cached input, output.
PRICE_IN, PRICE_CACHED, PRICE_OUT = 1.0, 0.1, 2.0
# Limits far above what one core can reach, so that they are checked but never refuse.
RPM, TPM, CONCURRENCY = 10_000_000, 1_000_000_000, 1024
SYSTEMS = ("glmaas", "glmaas+pg+redis", "litellm", "litellm+redis")
# The over-limit probe: a key (glmaas) or a deployment (LiteLLM) allowed PROBE_RPM requests/min.
PROBE_RPM, PROBE_TIMEOUT_S = 3, 5.0
TICK_MS = 1000 / os.sysconf("SC_CLK_TCK")


@dataclass
class Phase:
    system: str
    concurrency: int
    seconds: float
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


# --- processes and CPU accounting -------------------------------------------------------------


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(comm, ppid, utime+stime+cutime+cstime in ticks) of a process, or None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    comm = raw[raw.index("(") + 1 : raw.rindex(")")]
    fields = raw[raw.rindex(")") + 2 :].split()
    return comm, int(fields[1]), sum(int(f) for f in fields[11:15])


def _all_stats() -> dict[int, tuple[str, int, int]]:
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := _stat(int(entry))) is not None:
            out[int(entry)] = st
    return out


def tree_ticks(root: int) -> int:
    """CPU ticks of a process and all its descendants (children's reaped time included)."""
    stats = _all_stats()
    pids, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        for pid, (_, ppid, _) in stats.items():
            if ppid == parent and pid not in pids:
                pids.add(pid)
                frontier.append(pid)
    return sum(stats[p][2] for p in pids if p in stats)


def store_ticks() -> int:
    """CPU ticks of every PostgreSQL and Redis server process on the machine."""
    return sum(t for comm, _, t in _all_stats().values() if comm in ("postgres", "redis-server"))


def core_busy_ticks(core: str) -> tuple[int, int]:
    """(busy, total) ticks of one core since boot."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{core} "):
            v = [int(x) for x in line.split()[1:]]
            return sum(v) - v[3] - v[4], sum(v)
    raise RuntimeError(f"no cpu{core} in /proc/stat")


def wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"server exited with {proc.returncode}; its log:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    sys.exit(f"no answer from {url} after {timeout:.0f} s; log:\n{log.read_text()[-4000:]}")


@contextmanager
def serve(name: str, argv: list[str], health: str, workdir: Path, env: dict | None = None):
    """Start a server, wait until `health` answers, yield its Popen; stop it afterwards."""
    log = workdir / f"{name}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=workdir)
    try:
        wait_http(health, proc, log)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


# --- load --------------------------------------------------------------------------------------


def post(url: str, key: str | None) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(url, json.dumps(BODY).encode(), headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def check_reply(system: str, url: str, key: str | None) -> tuple[int, int]:
    """One request by hand: the reply must be a completion with usage, or the run stops."""
    status, body = post(url, key)
    try:
        content = body["choices"][0]["message"]["content"]
        usage = body["usage"]
    except (KeyError, IndexError, TypeError):
        sys.exit(f"{system}: unexpected reply {status}: {json.dumps(body)[:500]}")
    if status != 200 or not content:
        sys.exit(f"{system}: unexpected reply {status}: {json.dumps(body)[:500]}")
    print(f"  {system}: 200, {content!r}, usage {usage['prompt_tokens']}+{usage['completion_tokens']}")
    return usage["prompt_tokens"], usage["completion_tokens"]


def probe_rpm_limit(system: str, url: str, key: str, model: str) -> str:
    """Send requests one after another to a model/key whose rpm limit is PROBE_RPM, until one is
    not answered 200 or not answered within PROBE_TIMEOUT_S; say what happened to that one."""
    body = json.dumps({**BODY, "model": model}).encode()
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
    for n in range(PROBE_RPM + 3):
        start = time.monotonic()
        try:
            with urllib.request.urlopen(urllib.request.Request(url, body, headers),
                                        timeout=PROBE_TIMEOUT_S) as resp:
                status = resp.status
        except urllib.error.HTTPError as exc:
            status = exc.code
        except TimeoutError:
            return (f"{system}: rpm={PROBE_RPM}; {n} answered 200, then request {n + 1} got no answer "
                    f"within {PROBE_TIMEOUT_S:g} s (held, not refused)")
        ms = (time.monotonic() - start) * 1000
        if status != 200:
            return f"{system}: rpm={PROBE_RPM}; {n} answered 200, then request {n + 1} got {status} in {ms:.1f} ms"
    return f"{system}: rpm={PROBE_RPM}; all {PROBE_RPM + 3} answered 200 (limit not applied)"


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[unit]


def wrk(url: str, key: str | None, concurrency: int, seconds: float) -> dict:
    argv = ["taskset", "-c", LOAD_CORE, "wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(seconds))}s",
            "--timeout", "5s", "--latency", "-s", str(HERE / "post.lua"),
            "-H", "Content-Type: application/json", url]
    if key:
        argv[-1:-1] = ["-H", f"Authorization: Bearer {key}"]
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


def measure(system: str, url: str, key: str | None, server_pid: int | None, concurrency: int,
            seconds: float, warmup: float) -> Phase:
    warm = wrk(url, key, concurrency, warmup)["requests"] if warmup else 0
    load1 = os.getloadavg()[0]
    cpu0, store0, (busy0, total0) = (tree_ticks(server_pid) if server_pid else 0), store_ticks(), core_busy_ticks(SERVER_CORE)
    r = wrk(url, key, concurrency, seconds)
    cpu1, store1, (busy1, total1) = (tree_ticks(server_pid) if server_pid else 0), store_ticks(), core_busy_ticks(SERVER_CORE)
    n = max(r["requests"], 1)
    other = (busy1 - busy0) - (cpu1 - cpu0)
    phase = Phase(
        system=system, concurrency=concurrency, seconds=r["seconds"], requests=r["requests"],
        rps=r["requests"] / r["seconds"], p50_ms=r["p50"], p99_ms=r["p99"], errors=r["errors"],
        cpu_ms=(cpu1 - cpu0) * TICK_MS / n if server_pid else float("nan"),
        store_cpu_ms=(store1 - store0) * TICK_MS / n,
        core0_other_pct=100.0 * max(other, 0) / max(total1 - total0, 1), load1=load1,
        warmup_requests=warm,
    )
    print(f"  {system:16} c={concurrency:<3} {phase.rps:8.1f} req/s  cpu {phase.cpu_ms:6.2f} ms/req  "
          f"p50 {phase.p50_ms:7.2f} ms  p99 {phase.p99_ms:7.2f} ms  errors {phase.errors}  "
          f"load {load1:.2f}  core0 other {phase.core0_other_pct:.0f}%", flush=True)
    return phase


# --- the systems -------------------------------------------------------------------------------


def glmaas_cli(*args: str, store: list[str]) -> str:
    argv = [sys.executable, "-m", "glmaas", *args, *store]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(argv[2:])} failed:\n{done.stdout}{done.stderr}")
    return done.stdout


def glmaas_keys(store: list[str]) -> tuple[str, str]:
    """An account with a balance and a price for the model; a key with limits far above the load,
    and one allowed PROBE_RPM requests per minute."""
    glmaas_cli("accounts", "create", "bench", store=store)
    glmaas_cli("accounts", "topup", "bench", "1000000", store=store)
    glmaas_cli("prices", "set", "mock", "--input", str(PRICE_IN), "--cached-input", str(PRICE_CACHED),
               "--output", str(PRICE_OUT), store=store)
    out = glmaas_cli("keys", "create", "--account", "bench", "--name", "bench", "--rpm", str(RPM),
                     "--tpm", str(TPM), "--concurrency", str(CONCURRENCY), store=store)
    limited = glmaas_cli("keys", "create", "--account", "bench", "--name", "limited",
                         "--rpm", str(PROBE_RPM), store=store)
    return out.strip().splitlines()[-1], limited.strip().splitlines()[-1]


def run_glmaas(system: str, work: Path, args: argparse.Namespace, database_url: str | None,
               redis_url: str | None) -> tuple[list[Phase], list[str]]:
    data = work / system.replace(" ", "-").replace("+", "-")
    store = ["--data-dir", str(data)] + (["--database-url", database_url] if database_url else [])
    key, limited_key = glmaas_keys(store)
    port = free_port()
    argv = ["taskset", "-c", SERVER_CORE, sys.executable, "-m", "glmaas", "serve", "--host", HOST,
            "--port", str(port), "--no-default-model", "--model", "mock=mock", *store]
    if redis_url:
        argv += ["--redis-url", redis_url]
    url = f"http://{HOST}:{port}/v1/chat/completions"
    with serve(system.replace(" ", "-"), argv, f"http://{HOST}:{port}/healthz", work) as proc:
        prompt, completion = check_reply(system, url, key)
        phases = [measure(system, url, key, proc.pid, c, args.duration, args.warmup)
                  for c in args.concurrency]
        probe = probe_rpm_limit(system, url, limited_key, "mock")
    sent = 1 + sum(p.requests + p.warmup_requests for p in phases)
    in_flight = sum(p.concurrency * (2 if args.warmup else 1) for p in phases)
    books = check_books(system, store, key, sent, in_flight, prompt * PRICE_IN + completion * PRICE_OUT)
    return phases, [probe, books]


def check_books(system: str, store: list[str], key: str, sent: int, in_flight: int,
                price_micro: float) -> str:
    """After the load: every answered request settled once, at its price, and nothing held.
    wrk counts only the answers it read; up to `in_flight` more may have finished at its stops."""
    usage = json.loads(glmaas_cli("usage", "--format", "json", store=store))
    row = next((r for r in usage if r["key"] == key.split(".")[0]), {"requests": 0, "cost_micro": 0})
    held = re.search(r"held by open requests: (\d+)", glmaas_cli("accounts", "show", "bench", store=store))
    n, cost = row["requests"], row["cost_micro"]
    ok = sent <= n <= sent + in_flight and cost == round(n * price_micro) and held and held.group(1) == "0"
    return (f"{system}: {n} requests settled ({sent} answered + up to {in_flight} in flight at wrk's stops), "
            f"charged {cost} micro-units = {n} x {price_micro:g}, {held.group(1) if held else '?'} held: "
            f"{'books balance' if ok else 'MISMATCH'}")


@contextmanager
def postgres_database():
    """A fresh PostgreSQL database for the run, dropped afterwards; yields its SQLAlchemy URL."""
    import psycopg

    name = f"glmaas_bench_{os.getpid()}"
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
    exe = LITELLM_VENV / "bin" / "litellm"
    if not exe.exists():
        print(f"installing litellm[proxy]=={LITELLM_VERSION} into {LITELLM_VENV} (first run only)")
        subprocess.run(["python3", "-m", "venv", str(LITELLM_VENV)], check=True)
        subprocess.run([str(LITELLM_VENV / "bin" / "pip"), "install", "-q",
                        f"litellm[proxy]=={LITELLM_VERSION}"], check=True)
    return exe


def litellm_config(upstream_port: int, with_redis: bool) -> dict:
    deployment = {
        "model_name": "mock",
        "litellm_params": {
            "model": "openai/mock",
            "api_base": f"http://{HOST}:{upstream_port}/v1",
            "api_key": "unused",
            "input_cost_per_token": PRICE_IN / 1e6,
            "cache_read_input_token_cost": PRICE_CACHED / 1e6,
            "output_cost_per_token": PRICE_OUT / 1e6,
            "rpm": RPM,
            "tpm": TPM,
        },
    }
    limited = {"model_name": "mock-limited",
               "litellm_params": {**deployment["litellm_params"], "rpm": PROBE_RPM}}
    config: dict = {
        "model_list": [deployment, limited],
        "general_settings": {"master_key": MASTER_KEY},
        "litellm_settings": {"telemetry": False, "set_verbose": False, "json_logs": False},
    }
    if with_redis:
        config["router_settings"] = {
            "routing_strategy": "usage-based-routing-v2",
            "redis_url": f"{REDIS}/{LITELLM_REDIS_DB}",
        }
    return config


def litellm_env() -> dict:
    """An environment in which the proxy starts offline and talks to 127.0.0.1 only."""
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")
           and not k.startswith(("OPENAI_", "LITELLM_", "DATABASE_URL", "REDIS_"))}
    env.update({
        "LITELLM_TELEMETRY": "False",
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_LOG": "ERROR",
        "DISABLE_ADMIN_UI": "True",
        "NO_DOCS": "True",
        "HF_HUB_OFFLINE": "1",
        "NO_PROXY": "*",
    })
    return env


def run_litellm(system: str, work: Path, args: argparse.Namespace, upstream_port: int,
                with_redis: bool) -> tuple[list[Phase], list[str]]:
    config = work / f"{system.replace('+', '-')}.json"  # YAML is a superset of JSON
    config.write_text(json.dumps(litellm_config(upstream_port, with_redis), indent=2))
    port = free_port()
    argv = ["taskset", "-c", SERVER_CORE, str(litellm_bin()), "--config", str(config),
            "--host", HOST, "--port", str(port), "--num_workers", "1"]
    url = f"http://{HOST}:{port}/v1/chat/completions"
    with serve(system.replace("+", "-"), argv, f"http://{HOST}:{port}/health/liveliness", work,
               env=litellm_env()) as proc:
        check_reply(system, url, MASTER_KEY)
        phases = [measure(system, url, MASTER_KEY, proc.pid, c, args.duration, args.warmup)
                  for c in args.concurrency]
        probe = probe_rpm_limit(system, url, MASTER_KEY, "mock-limited")
    return phases, [probe]


# --- report ------------------------------------------------------------------------------------


def environment() -> dict[str, str]:
    def sh(*argv: str) -> str:
        done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
        return (done.stdout or done.stderr).strip()

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "?")
    dirty = " + uncommitted changes" if sh("git", "status", "--porcelain", "--", "glmaas") else ""
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "glmaas": sh("git", "log", "-1", "--format=%h %s", "--", "glmaas") + dirty,
        "litellm": LITELLM_VERSION,
        "wrk": sh("wrk", "-v").splitlines()[0].split(" [")[0],
        "python": sys.version.split()[0],
        "cpu": f"{cpu}, {os.cpu_count()} cores",
    }


def print_report(phases: list[Phase], checks: list[str], env: dict[str, str],
                 args: argparse.Namespace) -> None:
    print()
    for k, v in env.items():
        print(f"{k:8} {v}")
    print(f"load     wrk -t1 -c<c> -d{args.duration:g}s --latency after a {args.warmup:g} s warm-up; "
          f"server on core {SERVER_CORE}, wrk + mock upstream on core {LOAD_CORE}")
    print(f"request  POST /v1/chat/completions {json.dumps(BODY)}")
    print()
    head = (f"{'system':16} {'c':>3} {'req/s':>8} {'CPU ms/req':>10} {'p50 ms':>8} {'p99 ms':>8} "
            f"{'added p50':>9} {'db CPU ms/req':>13} {'errors':>6} {'load1':>5} {'core0 other':>11}")
    print(head)
    print("-" * len(head))
    for p in phases:
        added = "" if p.added_p50_ms is None else f"{p.added_p50_ms:+.2f}"
        cpu = "" if p.system == "upstream" else f"{p.cpu_ms:.2f}"
        print(f"{p.system:16} {p.concurrency:>3} {p.rps:8.1f} {cpu:>10} {p.p50_ms:8.2f} {p.p99_ms:8.2f} "
              f"{added:>9} {p.store_cpu_ms:13.2f} {p.errors:>6} {p.load1:5.2f} {p.core0_other_pct:10.0f}%")
    by = {(p.system, p.concurrency): p for p in phases}
    pairs = [("glmaas sqlite", "litellm"), ("glmaas pg+redis", "litellm+redis")]
    print()
    for ours, theirs in pairs:
        for c in args.concurrency:
            a, b = by.get((ours, c)), by.get((theirs, c))
            if a and b:
                print(f"{ours} / {theirs}, c={c}: {a.rps / b.rps:.1f}x the requests/s, "
                      f"{b.cpu_ms / a.cpu_ms:.1f}x less CPU per request, added p50 "
                      f"{a.added_p50_ms:.2f} vs {b.added_p50_ms:.2f} ms")
    print()
    for c in args.concurrency:
        a, b = by.get(("glmaas sqlite", c)), by.get(("litellm", c))
        if a and b:
            ratio = a.rps / b.rps
            print(f"target >= 5x LiteLLM's requests/s per worker core, c={c}: {ratio:.1f}x "
                  f"{'met' if ratio >= 5 else 'MISSED'}")
    a = by.get(("glmaas sqlite", min(args.concurrency)))
    if a and a.added_p50_ms is not None:
        print(f"target added p50 <= 2 ms on SQLite, c={a.concurrency}: {a.added_p50_ms:.2f} ms "
              f"{'met' if a.added_p50_ms <= 2 else 'MISSED'}")
    if checks:
        print()
        print("over the rpm limit (requests sent one after another), and glmaas's books after the run:")
        for line in checks:
            print(f"  {line}")
    if any(p.errors for p in phases):
        print("WARNING: some phases had errors (non-2xx or socket errors); their figures are not valid")
    if any(p.load1 > 1.5 or p.core0_other_pct > 10 for p in phases if p.system != "upstream"):
        print("NOTE: measured while other processes loaded the machine (see load1 and core0 other)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds of load per phase")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of unrecorded load first (0: none)")
    parser.add_argument("--concurrency", default="1,8", help="comma-separated connection counts")
    parser.add_argument("--systems", default=",".join(SYSTEMS),
                        help=f"comma-separated, from {','.join(SYSTEMS)} (the upstream baseline always runs)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (server logs)")
    args = parser.parse_args()
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    systems = args.systems.split(",")
    if unknown := set(systems) - set(SYSTEMS):
        parser.error(f"unknown systems: {', '.join(sorted(unknown))}")
    for tool, hint in (("wrk", "apt-get install -y wrk"), ("taskset", "apt-get install -y util-linux")):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is missing; install it: {hint}")
    try:
        import glmaas  # noqa: F401
    except ImportError:
        sys.exit("run this with the project's Python: .venv/bin/python bench/gateway.py")
    if "litellm" in systems or "litellm+redis" in systems:
        litellm_bin()

    env = environment()
    work = Path(tempfile.mkdtemp(prefix="glmaas-gateway-bench-"))
    phases: list[Phase] = []
    checks: list[str] = []
    port = free_port()
    argv = ["taskset", "-c", LOAD_CORE, sys.executable, str(HERE / "upstream.py"), "--port", str(port)]
    try:
        print(f"load average {os.getloadavg()[0]:.2f}; work dir {work}")
        with serve("upstream", argv, f"http://{HOST}:{port}/v1/models", work) as upstream:
            url = f"http://{HOST}:{port}/v1/chat/completions"
            check_reply("upstream", url, None)
            phases += [measure("upstream", url, None, upstream.pid, c, args.duration, args.warmup)
                       for c in args.concurrency]
            runs = []
            if "glmaas" in systems:
                runs.append(run_glmaas("glmaas sqlite", work, args, None, None))
            if "glmaas+pg+redis" in systems:
                with postgres_database() as database_url:
                    runs.append(run_glmaas("glmaas pg+redis", work, args, database_url,
                                           f"{REDIS}/{GLMAAS_REDIS_DB}"))
            if "litellm" in systems:
                runs.append(run_litellm("litellm", work, args, port, with_redis=False))
            if "litellm+redis" in systems:
                runs.append(run_litellm("litellm+redis", work, args, port, with_redis=True))
            for run_phases, run_checks in runs:
                phases += run_phases
                checks += run_checks
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    base = {p.concurrency: p.p50_ms for p in phases if p.system == "upstream"}
    for p in phases:
        if p.system != "upstream":
            p.added_p50_ms = p.p50_ms - base[p.concurrency]
    print_report(phases, checks, env, args)
    if args.json:
        args.json.write_text(json.dumps(
            {"environment": env, "phases": [asdict(p) for p in phases], "checks": checks}, indent=2))


if __name__ == "__main__":
    main()
