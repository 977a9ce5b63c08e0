"""One upstream server in a pool: its HTTP client, its health, and one streamed call.

Each member owns one `httpx` transport (`UpstreamConnections`: keep-alive connections with a
cap on their number) for its whole life; no client is made per request. Chat requests go to the
transport itself: the client's layers (auth flows, redirects, a cookie jar, event hooks) do
nothing an upstream needs, yet cost CPU on every request, and a cookie jar would carry one
tenant's upstream cookies into another's requests. Health checks use a client over the same
pool. Its health is a circuit breaker: `closed` (in use), `open` (ejected after a refused connection or `fail_threshold`
failures in a row, for `cooldown` seconds), then `half_open`, when one probe (a request or an
active health check) decides between closed and open again.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx

from glmaas.engines.chat import ChatCall
from glmaas.engines.upstream.config import UpstreamConfig
from glmaas.engines.upstream.connections import UpstreamConnections
from glmaas.engines.upstream.wire import as_chunk, authorization, request_body

# How long the end of a stream's body may take to follow its [DONE].
DRAIN_S = 0.25
CHAT_PATH = "/chat/completions"
# How long an unused connection to an upstream stays open.
KEEPALIVE_S = 30.0


class Unavailable(Exception):
    """The upstream could not take the request (no connection, 5xx, 429, timeout before any
    output): another member may."""


class Refused(Exception):
    """The upstream refused the request itself (a 4xx): no other member would do better."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Member:
    """An upstream server and its circuit breaker."""

    def __init__(self, config: UpstreamConfig, clock=time.monotonic,  # type: ignore[no-untyped-def]
                 stored_keys: Callable[[str], str | None] | None = None) -> None:
        self.config = config
        self._key = config.api_key(stored_keys)  # kept here only: never logged, never in an error
        self._clock = clock
        timeout = httpx.Timeout(connect=config.connect_timeout, read=None, write=30.0, pool=config.connect_timeout)
        self.transport: httpx.AsyncBaseTransport = UpstreamConnections(config.max_connections,
                                                                       keepalive_expiry=KEEPALIVE_S)
        key_header = authorization(config, self._key) if config.auth == "key" else {}
        self.client = httpx.AsyncClient(base_url=config.base_url, headers=key_header, timeout=timeout,
                                        transport=self.transport)
        # What every request carries, worked out once (its URL once per path: `_request`).
        self._urls: dict[str, httpx.URL] = {}
        self._chat_headers = {"accept": "application/json, text/event-stream", "content-type": "application/json",
                              "user-agent": "glmaas", **key_header}
        self._timeouts = {"timeout": timeout.as_dict()}
        self.outstanding = 0
        self.state = "closed"
        self.failures = 0
        self.opened_at = 0.0
        self._probing = False

    def __repr__(self) -> str:
        return f"Member({self.config.describe()}, {self.state})"

    # The circuit breaker.

    def available(self) -> bool:
        """Whether a request may be sent here now (a half-open member takes one probe)."""
        if self.state == "open" and self._clock() - self.opened_at >= self.config.cooldown:
            self.state = "half_open"
        return self.state == "closed" or (self.state == "half_open" and not self._probing)

    def retry_in(self) -> float:
        """Seconds until this member takes requests again: 0 unless its breaker is open."""
        if self.state != "open":
            return 0.0
        return max(0.0, self.config.cooldown - (self._clock() - self.opened_at))

    def succeeded(self) -> None:
        self.state, self.failures, self._probing = "closed", 0, False

    def failed(self, *, eject: bool = False) -> None:
        """Count a failure; `eject` opens the breaker at once (a refused connection is proof
        enough)."""
        self.failures += 1
        self._probing = False
        if eject or self.state == "half_open" or self.failures >= self.config.fail_threshold:
            self.state, self.opened_at = "open", self._clock()

    # Calls.

    def body(self, call: ChatCall, model: str) -> dict[str, Any]:
        """The request `call` makes of this upstream."""
        return request_body(self.config, call, model, self._key)

    async def stream(self, body: dict[str, Any], path: str = CHAT_PATH) -> AsyncIterator[dict[str, Any]]:
        """POST the chat request (or, with `path`, another) and yield its stream's chunks as JSON
        objects. Raises `Unavailable` or `Refused` before the first chunk; closing the iterator closes the
        connection, so the upstream sees the client leave at once."""
        request = self._request(body, path)
        try:
            async with asyncio.timeout(self.config.first_token_timeout):
                response = await self.transport.handle_async_request(request)
        except (httpx.HTTPError, TimeoutError) as exc:
            raise self._unreachable(exc) from None
        try:
            if response.status_code >= 400:
                await self._refusal(response)
            lines = response.aiter_lines()
            first = True
            while True:
                timeout = self.config.first_token_timeout if first else self.config.idle_timeout
                async with asyncio.timeout(timeout):
                    line = await anext(lines, None)
                if line is None:
                    return
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    await self._drain(lines)
                    return
                try:
                    chunk = json.loads(data)
                except ValueError:
                    continue
                if isinstance(chunk, dict):
                    first = False
                    yield chunk
        finally:
            await response.aclose()

    async def _drain(self, lines: AsyncIterator[str]) -> None:
        """Read what follows [DONE] (the end of the chunked body), so that the connection goes
        back to the pool: a response closed unread closes its connection, and the next request
        would pay for a new one, and its latency. Servers end the body right after [DONE]; one
        that lingers past `DRAIN_S` loses its connection rather than holding back the reply's
        last chunk, which waits for this."""
        try:
            async with asyncio.timeout(DRAIN_S):
                async for _ in lines:
                    pass
        except (httpx.HTTPError, TimeoutError):
            pass  # the reply was whole; the connection is closed instead

    async def whole(self, body: dict[str, Any], path: str = CHAT_PATH) -> AsyncIterator[dict[str, Any]]:
        """POST the chat request (or, with `path`, another) unstreamed and yield its whole reply as
        one stream chunk (`wire.as_chunk`). The reply must come within `first_token_timeout` (servers send nothing
        before the end of a non-streamed reply). Raises `Unavailable` or `Refused`; closing the
        iterator while it waits closes the connection."""
        request = self._request(body, path)
        try:
            async with asyncio.timeout(self.config.first_token_timeout):
                response = await self.transport.handle_async_request(request)
                try:
                    if response.status_code >= 400:
                        await self._refusal(response)
                    raw = await response.aread()
                finally:
                    await response.aclose()
        except (httpx.HTTPError, TimeoutError) as exc:
            raise self._unreachable(exc) from None
        try:
            reply = json.loads(raw)
        except ValueError:
            reply = None
        if not isinstance(reply, dict):
            self.failed()
            raise Unavailable(f"{self.config.describe()}: a reply that is not a JSON object")
        yield as_chunk(reply)

    def _request(self, body: dict[str, Any], path: str) -> httpx.Request:
        if self.state == "half_open":
            self._probing = True  # this request is the breaker's one probe
        url = self._urls.get(path)
        if url is None:
            url = self._urls[path] = self.client.base_url.join(path.lstrip("/"))
        headers = {**self._chat_headers, **self._auth()}
        content = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
        return httpx.Request("POST", url, headers=headers, content=content, extensions=self._timeouts)

    def _unreachable(self, exc: Exception) -> Unavailable:
        """A failure to reach the upstream or to hear from it in time: counted against it (a
        refused connection ejects it at once)."""
        self.failed(eject=isinstance(exc, httpx.ConnectError))
        # The reason (refused, a name that does not resolve, a certificate that does not verify)
        # is what the operator needs; a transport error's text holds no request content or key.
        reason = f" ({exc})" if isinstance(exc, httpx.TransportError) and str(exc) else ""
        return Unavailable(f"{self.config.describe()}: {type(exc).__name__}{reason}")

    async def _refusal(self, response: httpx.Response) -> None:
        raw = await response.aread()
        status = response.status_code
        if status >= 500 or status in (408, 429):
            self.failed()
            raise Unavailable(f"{self.config.describe()}: HTTP {status}")
        try:
            error = json.loads(raw).get("error") or {}
            message = str(error.get("message") or error)[:300]
        except (ValueError, AttributeError):
            message = f"HTTP {status}"
        raise Refused(status, message)

    def _auth(self) -> dict[str, str]:
        # A JWT is short-lived, so it is signed per request; a raw key sits in the client's headers.
        return authorization(self.config, self._key) if self.config.auth == "jwt" else {}

    async def check(self) -> bool:
        """An active health check: GET /models. Any answer below 500 means the server is up
        (a 401 or 404 still proves it is serving). A refused connection ejects it at once; a
        slow answer or a 5xx counts as one failure (a busy server may answer late: llama.cpp's
        Python server holds /models while it generates)."""
        refused = False
        try:
            response = await self.client.get("/models", headers=self._auth(),
                                              timeout=self.config.connect_timeout)
            healthy = response.status_code < 500
        except httpx.HTTPError as exc:
            healthy, refused = False, isinstance(exc, httpx.ConnectError)
        if healthy and self.state != "closed" and self._clock() - self.opened_at >= self.config.cooldown:
            self.succeeded()  # re-admitted, once its cooldown has passed
        elif not healthy:
            self.failed(eject=refused)
        return healthy

    async def close(self) -> None:
        await self.client.aclose()
