"""One upstream's settings, read from a `--model` spec or a `[[models]]` table of `--models FILE.toml`.

    openai+http://host:port/v1[,model=UPSTREAM_ID][,key_env=VAR|key_secret=NAME][,opt=v...]
    zhipu+https://open.bigmodel.cn/api/paas/v4[,key_env=VAR][,auth=jwt|key][,opt=v...]

Options: `model` (the upstream's model id; default: ours), `key_env` (the environment variable
holding the upstream's API key; read at start, never logged), `key_secret` (instead: the name of
a key sealed in the deployment's secret store by `glmaas upstream-keys set NAME`), `auth` (Zhipu only: `key` sends
the raw key, `jwt` signs a short-lived token with it), `weight`, `priority` (lower is preferred),
`tokenizer` (a tokenizer.json or GGUF file to estimate usage with), `context` (the context
length /models reports), `connect_timeout`, `first_token_timeout`, `idle_timeout` (seconds),
`max_connections`, `health_interval`, `fail_threshold`, `cooldown`, `cache_salt` (true: send
vLLM a `cache_salt` per tenant, so that one account cannot probe another's prompts through the
prefix cache's timing).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

Dialect = Literal["openai", "zhipu"]
DIALECTS: tuple[Dialect, ...] = ("openai", "zhipu")


class UpstreamConfigError(ValueError):
    """An upstream spec that cannot be understood."""


@dataclass(frozen=True)
class UpstreamConfig:
    """Where an upstream is and how to treat it."""

    dialect: Dialect
    base_url: str  # without a trailing slash, e.g. http://127.0.0.1:8080/v1
    model: str | None = None
    key_env: str | None = None
    key_secret: str | None = None
    auth: Literal["key", "jwt"] = "key"
    weight: float = 1.0
    priority: int = 0
    tokenizer: str | None = None
    context_length: int = 131072
    connect_timeout: float = 5.0
    first_token_timeout: float = 120.0
    idle_timeout: float = 60.0
    max_connections: int = 100
    health_interval: float = 5.0
    fail_threshold: int = 3
    cooldown: float = 5.0
    cache_salt: bool = False

    def api_key(self, stored: Callable[[str], str | None] | None = None) -> str | None:
        """The upstream's key from the environment, or from the secret store (`stored` opens a
        sealed key by name); None when none is configured."""
        if self.key_secret is not None:
            if stored is None:
                raise UpstreamConfigError(f"key_secret={self.key_secret} needs the deployment's secret store "
                                          "(given to `glmaas serve`)")
            key = stored(self.key_secret)
            if not key:
                raise UpstreamConfigError(f"no upstream key named {self.key_secret!r} is stored; "
                                          f"set it with `glmaas upstream-keys set {self.key_secret}`")
            return key
        if self.key_env is None:
            return None
        key = os.environ.get(self.key_env)
        if not key:
            raise UpstreamConfigError(f"the environment variable {self.key_env} (the upstream's key) is empty")
        return key

    def describe(self) -> str:
        """The upstream as it may be logged and shown: its address, never its key."""
        return f"{self.dialect}+{self.base_url}"


_FLOATS = {"weight", "connect_timeout", "first_token_timeout", "idle_timeout", "health_interval", "cooldown"}
_INTS = {"priority", "max_connections", "fail_threshold"}
_STRINGS = {"model", "key_env", "key_secret", "tokenizer"}


def parse_upstream(dialect: str, rest: str) -> UpstreamConfig:
    """`dialect` is the part before `+`; `rest` the URL after it, then `,key=value` options."""
    if dialect not in DIALECTS:
        raise UpstreamConfigError(f"unknown upstream dialect {dialect!r}; use one of {', '.join(DIALECTS)}")
    url, *items = rest.split(",")
    if not url.startswith(("http://", "https://")) or len(url) < 10:
        raise UpstreamConfigError(f"an upstream needs an http(s) URL, got {url!r}")
    options: dict[str, object] = {}
    for item in filter(None, (i.strip() for i in items)):
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not value:
            raise UpstreamConfigError(f"upstream option {item!r} is not key=value")
        options.update(_option(key, value))
    if "key_env" in options and "key_secret" in options:
        raise UpstreamConfigError("an upstream takes its key from key_env or key_secret, not both")
    return UpstreamConfig(dialect, url.rstrip("/"), **options)  # type: ignore[arg-type]


def _option(key: str, value: str) -> dict[str, object]:
    try:
        if key in _FLOATS:
            number = float(value)
            if number <= 0:
                raise ValueError
            return {key: number}
        if key in _INTS:
            return {key: int(value)}
    except ValueError:
        raise UpstreamConfigError(f"upstream option {key}={value!r} is not a positive number") from None
    if key in _STRINGS:
        return {key: value}
    if key == "context":
        return {"context_length": int(value)}
    if key == "cache_salt":
        if value not in ("true", "false"):
            raise UpstreamConfigError("upstream option cache_salt is true or false")
        return {"cache_salt": value == "true"}
    if key == "auth":
        if value not in ("key", "jwt"):
            raise UpstreamConfigError("upstream option auth is key or jwt")
        return {"auth": value}
    raise UpstreamConfigError(f"unknown upstream option {key!r}")
