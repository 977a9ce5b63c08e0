"""`glmaas serve`: start the API server. Its defaults are the deployment's, from `glmaas.config`."""

from __future__ import annotations

import argparse
from pathlib import Path

from glmaas import config
from glmaas.cli.common import add_store_options


def register(sub: argparse._SubParsersAction) -> None:
    """Add `serve` to the `glmaas` command."""
    p = sub.add_parser("serve", help="start the API server")
    add_store_options(p)
    p.add_argument("--host", default=config.DEFAULT_HOST)
    p.add_argument("--port", type=int, default=config.DEFAULT_PORT)
    p.add_argument("--model", action="append", metavar="ID=SPEC",
                   help="serve another model: ID=PATH.gguf, ID=llamacpp:PATH[,embedding=true,pooling=mean], "
                        "ID=glm:CHECKPOINT_DIR[,slots=8] (a GLM of `glmaas train`), "
                        "ID=sentence:DIR (an embedding model), ID=mock, ID=openai+http://HOST/v1[,opt=v...], "
                        "ID=zhipu+https://HOST/api/paas/v4[,...] (repeatable; an id given several "
                        "upstreams is served by a pool of them)")
    p.add_argument("--models", action="append", metavar="FILE.toml", type=Path,
                   help="models from a TOML file of [[models]] tables (id, and spec or url + options)")
    p.add_argument("--no-default-model", action="store_true",
                   help="do not load the embedded default models (chat and embedding)")
    p.add_argument("--redis-url", help="Redis URL: rate limits shared by several replicas")
    p.add_argument("--max-body-bytes", type=int, default=config.DEFAULT_MAX_BODY_BYTES)
    p.add_argument("--request-timeout", type=float, default=config.DEFAULT_REQUEST_TIMEOUT,
                   help="seconds a generation may run before it is stopped (and billed as produced)")
    p.add_argument("--usage-retention-days", type=float, default=config.DEFAULT_USAGE_RETENTION_DAYS,
                   help="per-request usage rows older than this are pruned (daily totals stay)")
    p.add_argument("--max-file-bytes", type=int, default=config.DEFAULT_MAX_FILE_BYTES,
                   help="the largest file /files accepts")
    p.add_argument("--batch-workers", type=int, default=config.DEFAULT_BATCH_WORKERS,
                   help="background workers running batch lines and async chat tasks (0: none)")
    p.add_argument("--fine-tuning-jobs", type=int, default=config.DEFAULT_FINE_TUNING_JOBS,
                   help="fine-tuning jobs this server trains at once, each in a worker process (0: none)")
    p.add_argument("--fine-tuning-threads", type=int, default=config.DEFAULT_FINE_TUNING_THREADS,
                   help="torch threads of a fine-tuning worker (default: every core but one)")
    p.add_argument("--batch-slot-share", type=_share, default=config.DEFAULT_BATCH_SLOT_SHARE,
                   help="the most of a model's engine slots background work may take (0-1)")
    p.add_argument("--batch-price-percent", type=_percent, default=config.DEFAULT_BATCH_PRICE_PERCENT,
                   help="batch lines are sold at this percent of the model's prices")
    p.add_argument("--batch-lease-s", type=float, default=config.DEFAULT_BATCH_LEASE_S,
                   help="seconds before another replica takes over the work of one that died")
    p.add_argument("--batch-max-attempts", type=_positive, default=config.DEFAULT_BATCH_MAX_ATTEMPTS,
                   help="attempts a batch line or async task may take before it fails")
    p.add_argument("--drain-timeout", type=_seconds, default=config.DEFAULT_DRAIN_TIMEOUT,
                   help="on SIGTERM, seconds to let requests in flight finish before they are cut short")
    p.add_argument("--metrics-port", type=int,
                   help="also serve /metrics on this port, without the admin token (see --metrics-host)")
    p.add_argument("--metrics-host", default=config.DEFAULT_METRICS_HOST,
                   help="the address --metrics-port listens on")
    p.add_argument("--log-format", choices=config.LOG_FORMATS, default="text",
                   help="text, or json: one JSON object per line (a request's line holds its fields)")
    p.add_argument("--log-content", action="store_true",
                   help="log the request and response bodies (prompts and outputs) with each request")
    p.set_defaults(func=serve)


def _share(text: str) -> float:
    value = float(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError("a share is above 0 and at most 1")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError("seconds are 0 or more")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("at least 1")
    return value


def _percent(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError("a percent is between 0 and 100")
    return value


def settings_from(args: argparse.Namespace) -> config.Settings:
    """The deployment `serve`'s options describe."""
    return config.Settings(
        data_dir=config.resolve_data_dir(args.data_dir),
        database_url=args.database_url,
        redis_url=args.redis_url,
        models=list(args.model or []),
        model_files=list(args.models or []),
        default_model=not args.no_default_model,
        max_body_bytes=args.max_body_bytes,
        request_timeout=args.request_timeout,
        usage_retention_days=args.usage_retention_days,
        max_file_bytes=args.max_file_bytes,
        batch_workers=args.batch_workers,
        batch_slot_share=args.batch_slot_share,
        batch_price_percent=args.batch_price_percent,
        batch_lease_s=args.batch_lease_s,
        batch_max_attempts=args.batch_max_attempts,
        drain_timeout=args.drain_timeout,
        metrics_port=args.metrics_port,
        metrics_host=args.metrics_host,
        log_format=args.log_format,
        log_content=args.log_content,
        fine_tuning_jobs=args.fine_tuning_jobs,
        fine_tuning_threads=args.fine_tuning_threads,
    )


def serve(args: argparse.Namespace) -> int:
    from glmaas.server import build_state, configure_logging, run

    settings = settings_from(args)
    configure_logging(settings.log_format)
    run(build_state(settings), settings, host=args.host, port=args.port)
    return 0
