"""The keep-alive connections to one upstream server: an `httpx` transport that reuses HTTP/1.1
connections last-in first-out, with a cap on how many are open at once.

httpx's own transport (httpcore's pool) looks at every pooled connection whenever a request
starts or a response ends: whether it expired, whether its socket became readable (a system
call each), and counts its idle ones once per connection. With a connection per concurrent
request that work grows with the concurrency: leaving it took about 30% off glmaas's CPU per
request at 8 concurrent requests in front of a do-nothing upstream. Here a request takes the
most recently used idle connection and checks only that one; a finished response puts its
connection back on top.

    transport = UpstreamConnections(max_connections=100, keepalive_expiry=30.0)
    client = httpx.AsyncClient(base_url=url, transport=transport)   # or transport.handle_async_request

Requests carry their timeouts in `request.extensions["timeout"]` as httpx sets them; `pool`
bounds the wait for a free connection when all `max_connections` are busy.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

import httpcore
import httpx

# httpcore's errors as httpx raises them, so that callers catch httpx's tree only.
_ERRORS: tuple[tuple[type[Exception], type[httpx.HTTPError]], ...] = (
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.TimeoutException, httpx.TimeoutException),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.ProxyError, httpx.ProxyError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
    (httpcore.NetworkError, httpx.NetworkError),
    (httpcore.ProtocolError, httpx.ProtocolError),
)


@contextmanager
def _as_httpx_errors() -> Iterator[None]:
    try:
        yield
    except httpx.HTTPError:
        raise
    except Exception as exc:
        for theirs, ours in _ERRORS:
            if isinstance(exc, theirs):
                raise ours(str(exc)) from exc
        raise


class UpstreamConnections(httpx.AsyncBaseTransport):
    """HTTP/1.1 keep-alive connections to upstream servers, at most `max_connections` open; see
    the module docstring."""

    def __init__(self, max_connections: int, keepalive_expiry: float,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self._max = max_connections
        self._keepalive_expiry = keepalive_expiry
        self._ssl_context = ssl_context
        self._idle: list[httpcore.AsyncHTTPConnection] = []  # the most recently used last
        self._free = asyncio.Semaphore(max_connections)  # a slot per connection in use

    @property
    def idle(self) -> int:
        """Connections open and waiting for a request."""
        return len(self._idle)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeouts = request.extensions.get("timeout", {})
        await self._take_slot(timeouts.get("pool"))
        url = request.url
        origin = httpcore.Origin(url.raw_scheme, url.raw_host, url.port or (443 if url.scheme == "https" else 80))
        connection: httpcore.AsyncHTTPConnection | None = None
        try:  # from here on the slot is this request's: given back however it fails or is cancelled
            connection = await self._idle_connection(origin)
            if connection is None:
                connection = httpcore.AsyncHTTPConnection(origin, ssl_context=self._ssl_context_for(url),
                                                          keepalive_expiry=self._keepalive_expiry)
            call = httpcore.Request(request.method, httpcore.URL(scheme=url.raw_scheme, host=url.raw_host,
                                                                 port=url.port, target=url.raw_path),
                                    headers=request.headers.raw, content=request.stream,
                                    extensions=request.extensions)
            with _as_httpx_errors():
                response = await connection.handle_async_request(call)
        except BaseException:
            await self._give_back(connection)
            raise
        return httpx.Response(status_code=response.status, headers=response.headers,
                              stream=_Body(response.stream, self, connection), extensions=response.extensions)

    async def _take_slot(self, timeout: float | None) -> None:
        if not self._free.locked():
            await self._free.acquire()  # at once, without a timer
            return
        try:
            async with asyncio.timeout(timeout):
                await self._free.acquire()
        except TimeoutError:
            raise httpx.PoolTimeout(f"all {self._max} upstream connections stayed busy") from None

    async def _idle_connection(self, origin: httpcore.Origin) -> httpcore.AsyncHTTPConnection | None:
        """The most recently used idle connection to `origin` that is still good (not past its
        keep-alive, not closed by the server); the ones found gone on the way are closed."""
        for i in range(len(self._idle) - 1, -1, -1):
            connection = self._idle[i]
            if not connection.can_handle_request(origin):
                continue
            del self._idle[i]
            if connection.is_available() and not connection.has_expired():
                return connection
            await connection.aclose()
        return None

    def _ssl_context_for(self, url: httpx.URL) -> ssl.SSLContext | None:
        if url.scheme != "https":
            return None
        if self._ssl_context is None:
            self._ssl_context = httpx.create_ssl_context()
        return self._ssl_context

    async def _give_back(self, connection: httpcore.AsyncHTTPConnection | None) -> None:
        """A request is over with `connection` (None: it failed before it had one): its slot is
        free, and the connection kept for the next request if it can take one, else closed."""
        self._free.release()
        if connection is None:
            return
        if connection.is_idle() and len(self._idle) < self._max:
            self._idle.append(connection)
        elif not connection.is_closed():
            await connection.aclose()

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for connection in idle:
            await connection.aclose()


class _Body(httpx.AsyncByteStream):
    """A response's body; closing it hands its connection back (reusable once the body was read
    to its end, else closed)."""

    def __init__(self, stream: AsyncIterator[bytes], pool: UpstreamConnections,
                 connection: httpcore.AsyncHTTPConnection) -> None:
        self._stream = stream
        self._pool = pool
        self._connection: httpcore.AsyncHTTPConnection | None = connection

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _as_httpx_errors():
            async for part in self._stream:
                yield part

    async def aclose(self) -> None:
        connection, self._connection = self._connection, None
        if connection is None:
            return
        try:
            if hasattr(self._stream, "aclose"):
                with _as_httpx_errors():
                    await self._stream.aclose()
        finally:
            await self._pool._give_back(connection)
