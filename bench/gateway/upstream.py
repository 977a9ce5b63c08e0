"""A do-nothing OpenAI-compatible upstream: every request gets the same small chat completion.

It stands in for the model server behind LiteLLM's proxy, and is called directly to measure the
baseline latency that a gateway adds to. Raw asyncio (uvloop when present) and no framework, so
its own cost is small and the same for every system measured.

    python bench/gateway/upstream.py --port 9100
"""

from __future__ import annotations

import argparse
import asyncio
import json

# What glmaas's mock engine answers to the benchmark's request with max_tokens=16: the first 16
# bytes of its reply, one token per byte, cut by length; 25 prompt tokens in its chat template.
COMPLETION = {
    "id": "chatcmpl-upstream",
    "object": "chat.completion",
    "created": 1767225600,
    "model": "mock",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "This is the mock"},
            "finish_reason": "length",
        }
    ],
    "usage": {"prompt_tokens": 25, "completion_tokens": 16, "total_tokens": 41},
}
MODELS = {"object": "list", "data": [{"id": "mock", "object": "model", "owned_by": "bench"}]}


def _response(body: dict, keep_alive: bool) -> bytes:
    payload = json.dumps(body, separators=(",", ":")).encode()
    head = (
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
        f"content-length: {len(payload)}\r\n"
        f"connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n"
    )
    return head.encode() + payload


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> None:
    if headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int((await reader.readline()).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                return
    length = int(headers.get("content-length", "0"))
    if length:
        await reader.readexactly(length)


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            request_line, *lines = head.decode("latin-1").split("\r\n")
            headers = {}
            for line in lines:
                name, sep, value = line.partition(":")
                if sep:
                    headers[name.strip().lower()] = value.strip()
            await _read_body(reader, headers)
            keep_alive = headers.get("connection", "").lower() != "close"
            method, path = request_line.split(" ")[:2]
            body = MODELS if method == "GET" and path.rstrip("/").endswith("/models") else COMPLETION
            writer.write(_response(body, keep_alive))
            await writer.drain()
            if not keep_alive:
                break
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def main(host: str, port: int) -> None:
    server = await asyncio.start_server(_serve, host, port, backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main(args.host, args.port))
