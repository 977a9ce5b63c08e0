"""A do-nothing OpenAI-compatible upstream: every request gets the same small chat completion
(as SSE chunks, ending with a usage chunk, when the request asks to stream).

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


def _stream(keep_alive: bool) -> bytes:
    """The same completion as an SSE stream: role, content, finish, usage, [DONE]."""
    choice = COMPLETION["choices"][0]
    base = {k: COMPLETION[k] for k in ("id", "created", "model")} | {"object": "chat.completion.chunk"}
    chunks = [
        {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]},
        {**base, "choices": [{"index": 0, "delta": {"content": choice["message"]["content"]}, "finish_reason": None}]},
        {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": choice["finish_reason"]}]},
        {**base, "choices": [], "usage": COMPLETION["usage"]},
    ]
    payload = b"".join(b"data: " + json.dumps(c, separators=(",", ":")).encode() + b"\n\n" for c in chunks)
    payload += b"data: [DONE]\n\n"
    head = (
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
        f"content-length: {len(payload)}\r\n"
        f"connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n"
    )
    return head.encode() + payload


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while True:
            size = int((await reader.readline()).split(b";")[0], 16)
            body += (await reader.readexactly(size + 2))[:size]
            if size == 0:
                return body
    length = int(headers.get("content-length", "0"))
    return await reader.readexactly(length) if length else b""


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
            request = await _read_body(reader, headers)
            keep_alive = headers.get("connection", "").lower() != "close"
            method, path = request_line.split(" ")[:2]
            if method == "GET" and path.rstrip("/").endswith("/models"):
                writer.write(_response(MODELS, keep_alive))
            elif b'"stream":true' in request.replace(b" ", b""):
                writer.write(_stream(keep_alive))
            else:
                writer.write(_response(COMPLETION, keep_alive))
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
