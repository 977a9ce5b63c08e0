"""Upstream engines: models served by another server (vLLM, SGLang, llama.cpp's server, Ollama,
another glmaas, a cloud MaaS) in the OpenAI or the Zhipu dialect, sold through glmaas's keys,
limits and ledger.

An upstream is asked in messages, not token ids, so it is a `ChatEngine` (`engines/chat.py`).
`config.py` reads an upstream's spec, `wire.py` speaks its dialect, `member.py` holds one
server's connection pool and circuit breaker, `tokens.py` estimates usage when an upstream
reports none, and `pool.py` is the engine: a pool of members with failover.
"""

from glmaas.engines.upstream.config import UpstreamConfig, UpstreamConfigError, parse_upstream
from glmaas.engines.upstream.pool import UpstreamEngine

__all__ = ["UpstreamConfig", "UpstreamConfigError", "UpstreamEngine", "parse_upstream"]
