"""An OpenAI-compatible server whose chat stream stops after its first content chunk ("Hel") and
goes on ("lo", the finish, usage) only once POST /release has been called (or after 30 s).

    python tests/api/held_upstream.py PORT
"""

from __future__ import annotations

import asyncio
import json
import sys

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

released = asyncio.Event()


def _event(delta: dict, finish: str | None = None, **extra: object) -> str:
    chunk = {"id": "held", "object": "chat.completion.chunk",
             "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}
    return f"data: {json.dumps(chunk)}\n\n"


async def chat(request: Request) -> StreamingResponse:
    await request.body()
    released.clear()

    async def events():  # type: ignore[no-untyped-def]
        yield _event({"role": "assistant"})
        yield _event({"content": "Hel"})
        try:
            await asyncio.wait_for(released.wait(), 30)
        except TimeoutError:
            pass
        yield _event({"content": "lo"}, "stop")
        usage = {"prompt_tokens": 5, "completion_tokens": 2}
        yield f"data: {json.dumps({'id': 'held', 'choices': [], 'usage': usage})}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


async def release(request: Request) -> Response:
    released.set()
    return Response(status_code=204)


async def models(request: Request) -> JSONResponse:
    return JSONResponse({"object": "list", "data": [{"id": "held", "object": "model"}]})


app = Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"]), Route("/v1/models", models),
                        Route("/release", release, methods=["POST"])])

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
