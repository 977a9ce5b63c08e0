"""The server's Prometheus metrics: `GET /metrics` (the admin token) or `--metrics-port`.

Each app has a registry of its own (several apps can live in one process, as in the tests).
Measurements come from three places, none of them a resource's own code:
- every settlement (`Meter.observers`): latency, time to first token, time per output token,
  queue time, tokens and money, by model — so every metered resource and background work counts;
- every HTTP request's record (`api.metered.RequestRecord`): requests by endpoint, dialect,
  model and status, and refusals by their error code;
- at scrape time (`ServerCollector`): engines' slots, queues and KV cells, open holds, the books'
  group commit (round trips and the steps they carried), upstream members' health, in-flight
  requests and the drain — read from what the server already keeps.

One process per replica: each replica is scraped on its own (`job`/`instance` labels tell them
apart); no multi-process aggregation is needed.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from glmaas.api.errors import ErrorKind
from glmaas.api.operations.drain import Drain
from glmaas.api.state import AppState
from glmaas.platform.ledger import HoldTicket, Outcome, RequestStatus, Settlement

# The `_created` series of every counter and histogram would double what is scraped and tell
# nothing a restart does not (process-wide, as prometheus_client has it).
disable_created_metrics()

# Seconds. From a few milliseconds (a small model on a GPU, a cached prompt) to the default
# request timeout (600 s, a long generation on two CPU cores).
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0, 600.0)
# Seconds per output token: ~1 ms (a small model batched on a GPU) to ~1 s (a large one on a CPU).
TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.25,
                 0.5, 1.0, 2.5)
# Seconds from arrival to admission (parsing, the prompt, limits and the hold): sub-millisecond
# when all is well; seconds mean the database or Redis is slow.
QUEUE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# The refusals an operator watches: limits and money.
REFUSAL_KINDS = frozenset({ErrorKind.RATE_LIMITED, ErrorKind.TOKEN_RATE_LIMITED, ErrorKind.CONCURRENCY_LIMITED,
                           ErrorKind.INSUFFICIENT_BALANCE, ErrorKind.BUDGET_EXCEEDED, ErrorKind.SHUTTING_DOWN})


class ServerMetrics:
    """The metrics of one app and the registry that serves them."""

    def __init__(self, state: AppState, drain: Drain) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("glmaas_requests", "HTTP requests answered, by endpoint, dialect, model and status",
                                ["endpoint", "dialect", "model", "status"], registry=r)
        self.refusals = Counter("glmaas_refusals", "Requests refused by a rate limit, the balance or a budget, "
                                "or while draining, by error code", ["code"], registry=r)
        self.settled = Counter("glmaas_settled_requests", "Metered requests settled, by how they ended",
                               ["model", "status"], registry=r)
        self.latency = Histogram("glmaas_request_duration_seconds", "Metered requests, arrival to settlement",
                                 ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.first_token = Histogram("glmaas_time_to_first_token_seconds", "Arrival to the first output token",
                                     ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.per_token = Histogram("glmaas_time_per_output_token_seconds",
                                   "Time between output tokens after the first, per request",
                                   ["model"], buckets=TOKEN_BUCKETS, registry=r)
        self.queue = Histogram("glmaas_queue_time_seconds", "Arrival to admission", ["model"],
                               buckets=QUEUE_BUCKETS, registry=r)
        self.prompt_tokens = Counter("glmaas_prompt_tokens", "Prompt tokens of settled requests", ["model"],
                                     registry=r)
        self.cached_tokens = Counter("glmaas_cached_prompt_tokens", "Of those, served from a prompt cache",
                                     ["model"], registry=r)
        self.completion_tokens = Counter("glmaas_completion_tokens", "Output tokens of settled requests",
                                         ["model"], registry=r)
        self.money = Counter("glmaas_settled_micro_units", "Money charged by settlements, in micro-units of the "
                             "deployment's currency", ["model"], registry=r)
        r.register(ServerCollector(state, drain))
        self._by_model: dict[str, _ModelSeries] = {}
        self._requests_by_labels: dict[tuple[str, str, str, int], Any] = {}
        state.meter.observers.append(self.observe_settlement)

    def observe_settlement(self, ticket: HoldTicket, outcome: Outcome, settlement: Settlement | None) -> None:
        """One settlement's measurements (a `Meter` observer: on the request's path, so a few
        updates of series looked up once per model, nothing more)."""
        series = self._by_model.get(ticket.model) or self._series_of(ticket.model)
        settled = series.settled.get(outcome.status)
        if settled is None:
            settled = series.settled[outcome.status] = self.settled.labels(ticket.model, outcome.status)
        settled.inc()
        series.latency.observe(outcome.total_ms / 1000)
        series.queue.observe(outcome.queue_ms / 1000)
        if outcome.first_token_ms is not None:
            series.first_token.observe(outcome.first_token_ms / 1000)
            if outcome.completion_tokens > 1:
                decode_ms = outcome.total_ms - outcome.first_token_ms
                series.per_token.observe(decode_ms / 1000 / (outcome.completion_tokens - 1))
        series.prompt_tokens.inc(outcome.prompt_tokens if outcome.prompt_tokens is not None else ticket.prompt_tokens)
        series.cached_tokens.inc(outcome.cached_tokens)
        series.completion_tokens.inc(outcome.completion_tokens)
        if settlement is not None and settlement.cost:
            series.money.inc(settlement.cost)

    def _series_of(self, model: str) -> _ModelSeries:
        series = _ModelSeries(
            settled={}, latency=self.latency.labels(model), queue=self.queue.labels(model),
            first_token=self.first_token.labels(model), per_token=self.per_token.labels(model),
            prompt_tokens=self.prompt_tokens.labels(model), cached_tokens=self.cached_tokens.labels(model),
            completion_tokens=self.completion_tokens.labels(model), money=self.money.labels(model))
        self._by_model[model] = series
        return series

    def observe_request(self, endpoint: str, dialect: str, model: str, status: int,
                        error: ErrorKind | None) -> None:
        """One HTTP request's measurements."""
        labels = (endpoint, dialect, model, status)
        counter = self._requests_by_labels.get(labels)
        if counter is None:
            counter = self._requests_by_labels[labels] = self.requests.labels(endpoint, dialect, model, str(status))
        counter.inc()
        if error in REFUSAL_KINDS:
            self.refusals.labels(str(error)).inc()


@dataclass
class _ModelSeries:
    """One model's series of the settlement metrics (`labels()` is looked up once, not per request)."""

    settled: dict[RequestStatus, Any]
    latency: Any
    queue: Any
    first_token: Any
    per_token: Any
    prompt_tokens: Any
    cached_tokens: Any
    completion_tokens: Any
    money: Any


class ServerCollector(Collector):
    """Gauges read at scrape time from what the server keeps anyway: nothing is counted on the
    request or decode path for them."""

    def __init__(self, state: AppState, drain: Drain) -> None:
        self.state = state
        self.drain = drain

    def collect(self) -> Iterator[Metric]:
        state = self.state
        holds = GaugeMetricFamily("glmaas_open_holds", "Requests of this replica admitted and not yet settled",
                                  labels=["model"])
        # A copy in one step: a scrape on --metrics-port runs on another thread than the requests.
        for model, n in sorted(dict(state.meter.open_by_model).items()):
            holds.add_metric([model], n)
        yield holds
        batches = CounterMetricFamily("glmaas_books_batches", "Round trips of the books on PostgreSQL and "
                                      "Redis, by step (group commit; none on SQLite)", labels=["step"])
        steps = CounterMetricFamily("glmaas_books_steps", "Steps those round trips carried: steps / batches "
                                    "is the mean batch", labels=["step"])
        for kind, (sent, carried) in state.meter.batching().items():
            batches.add_metric([kind], sent)
            steps.add_metric([kind], carried)
        yield batches
        yield steps
        yield from _engine_gauges(state)
        drain = self.drain
        yield GaugeMetricFamily("glmaas_in_flight_requests", "HTTP requests being served (probes and "
                                "metrics aside)", value=drain.in_flight)
        yield GaugeMetricFamily("glmaas_draining", "1 once the replica has begun its shutdown drain",
                                value=1 if drain.draining else 0)


def _engine_gauges(state: AppState) -> Iterator[Metric]:
    busy = GaugeMetricFamily("glmaas_engine_busy_slots", "Requests an engine is generating now", labels=["model"])
    waiting = GaugeMetricFamily("glmaas_engine_waiting_requests", "Requests waiting for an engine slot",
                                labels=["model"])
    slots = GaugeMetricFamily("glmaas_engine_slots", "Requests an engine can generate at once", labels=["model"])
    kv_used = GaugeMetricFamily("glmaas_engine_kv_cells_used", "KV cache cells holding a token", labels=["model"])
    kv_total = GaugeMetricFamily("glmaas_engine_kv_cells", "KV cache cells, all slots together", labels=["model"])
    threads = GaugeMetricFamily("glmaas_engine_threads", "CPU threads an engine computes with now (llama.cpp's "
                                "`threads=auto` moves it with contention)", labels=["model"])
    up = GaugeMetricFamily("glmaas_upstream_healthy", "1 while an upstream member is in use (its circuit "
                           "closed), 0 while it is ejected or on probation", labels=["model", "upstream"])
    outstanding = GaugeMetricFamily("glmaas_upstream_outstanding_requests", "Requests in flight to an upstream "
                                    "member", labels=["model", "upstream"])
    registry = state.registry
    for info in registry.models():
        engine = registry.get(info.model_id)
        if engine is None:
            continue  # an embedding model: no slots to show
        model = info.model_id
        load = getattr(engine, "load", None)
        if load is not None:
            now = load()
            busy.add_metric([model], now.busy)
            waiting.add_metric([model], now.waiting)
            if now.slots is not None:
                slots.add_metric([model], now.slots)
            if now.kv_cells is not None and now.kv_cells_used is not None:
                kv_total.add_metric([model], now.kv_cells)
                kv_used.add_metric([model], now.kv_cells_used)
            if now.threads is not None:
                threads.add_metric([model], now.threads)
        for member in getattr(engine, "members", ()):
            name = member.config.describe()
            up.add_metric([model, name], 1 if member.state == "closed" else 0)
            outstanding.add_metric([model, name], member.outstanding)
    yield from (busy, waiting, slots, kv_used, kv_total, threads, up, outstanding)
