"""The upstream connection pool against a small HTTP/1.1 server on loopback that counts the
connections it is given: reuse, the cap, and a body left unread."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest

from glmaas.engines.upstream.connections import UpstreamConnections

REPLY = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok"


class CountingServer:
    """Answers every request with `REPLY` after `delay` seconds, keeping connections open."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.connections = 0
        self.open = 0
        self.most_open = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open += 1
        self.most_open = max(self.most_open, self.open)
        try:
            while (head := await reader.readuntil(b"\r\n\r\n")):
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                await reader.readexactly(length)
                await asyncio.sleep(self.delay)
                writer.write(REPLY)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.open -= 1
            writer.close()


@asynccontextmanager
async def serving(server: CountingServer) -> AsyncIterator[str]:
    listener = await asyncio.start_server(server.serve, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/v1/chat/completions"
    finally:
        listener.close()


def _request(url: str, pool_timeout: float = 2.0) -> httpx.Request:
    # A slot never given back fails the next request that needs it, instead of hanging the test.
    return httpx.Request("POST", url, content=b"{}", extensions={"timeout": {"pool": pool_timeout}})


async def _post(pool: UpstreamConnections, url: str) -> bytes:
    response = await pool.handle_async_request(_request(url))
    try:
        return await response.aread()
    finally:
        await response.aclose()


def test_requests_one_after_another_share_one_connection() -> None:
    async def run() -> CountingServer:
        server = CountingServer()
        async with serving(server) as url:
            pool = UpstreamConnections(max_connections=4, keepalive_expiry=30)
            for _ in range(5):
                assert await _post(pool, url) == b"ok"
            assert pool.idle == 1
            await pool.aclose()
        return server

    assert asyncio.run(run()).connections == 1


def test_concurrent_requests_open_no_more_connections_than_the_cap() -> None:
    async def run() -> CountingServer:
        server = CountingServer(delay=0.05)
        async with serving(server) as url:
            pool = UpstreamConnections(max_connections=2, keepalive_expiry=30)
            assert await asyncio.gather(*(_post(pool, url) for _ in range(6))) == [b"ok"] * 6
            await pool.aclose()
        return server

    server = asyncio.run(run())
    assert (server.connections, server.most_open) == (2, 2)


def test_a_request_waiting_past_the_pool_timeout_fails() -> None:
    async def run() -> None:
        server = CountingServer(delay=1.0)
        async with serving(server) as url:
            pool = UpstreamConnections(max_connections=1, keepalive_expiry=30)
            busy = asyncio.create_task(_post(pool, url))
            await asyncio.sleep(0.05)
            with pytest.raises(httpx.PoolTimeout):
                await pool.handle_async_request(_request(url, pool_timeout=0.1))
            assert await busy == b"ok"
            await pool.aclose()

    asyncio.run(run())


def test_a_body_closed_unread_gives_up_its_connection() -> None:
    async def run() -> CountingServer:
        server = CountingServer()
        async with serving(server) as url:
            pool = UpstreamConnections(max_connections=1, keepalive_expiry=30)
            response = await pool.handle_async_request(_request(url))
            await response.aclose()  # the body was never read: the connection cannot be reused
            assert pool.idle == 0
            assert await _post(pool, url) == b"ok"  # and its slot is free again
            await pool.aclose()
        return server

    assert asyncio.run(run()).connections == 2


def test_a_refused_connection_is_httpx_s_connect_error() -> None:
    async def run() -> None:
        server = CountingServer()
        async with serving(server) as url:
            pass  # closed: nothing listens there now
        pool = UpstreamConnections(max_connections=1, keepalive_expiry=30)
        with pytest.raises(httpx.ConnectError):
            await _post(pool, url)
        with pytest.raises(httpx.ConnectError):  # the failed attempt gave its slot back
            await _post(pool, url)

    asyncio.run(run())


def test_a_request_cancelled_while_it_waits_for_its_reply_gives_its_slot_back() -> None:
    async def run() -> None:
        server = CountingServer(delay=0.3)
        async with serving(server) as url:
            pool = UpstreamConnections(max_connections=1, keepalive_expiry=30)
            waiting = asyncio.create_task(_post(pool, url))
            await asyncio.sleep(0.05)
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            # not a PoolTimeout: the slot is free
            response = await pool.handle_async_request(_request(url, pool_timeout=0.1))
            assert await response.aread() == b"ok"
            await pool.aclose()

    asyncio.run(run())
