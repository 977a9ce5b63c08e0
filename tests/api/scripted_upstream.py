"""An OpenAI-compatible server that answers every chat request with the same scripted stream:
reasoning, then a tool call in two pieces, a field no dialect knows, and usage (or, asked
unstreamed, the same reply whole). It echoes what it
was asked in a header-free way: the last request body is served at GET /last.

    python tests/api/scripted_upstream.py PORT
"""

from __future__ import annotations

import json
import sys

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

SCRIPT = [
    {"delta": {"role": "assistant", "reasoning_content": "The user wants the weather."}},
    {"delta": {"tool_calls": [{"index": 0, "id": "call_w1", "type": "function",
                               "function": {"name": "get_weather", "arguments": "{\"city\": "}}]}},
    {"delta": {"tool_calls": [{"index": 0, "function": {"arguments": "\"Beijing\"}"}}]},
     "secret_vendor_field": "must not reach clients"},
    {"delta": {}, "finish_reason": "tool_calls"},
]
USAGE = {"prompt_tokens": 31, "completion_tokens": 17, "total_tokens": 48,
         "prompt_tokens_details": {"cached_tokens": 11}, "completion_tokens_details": {"reasoning_tokens": 6}}
WHOLE = {"role": "assistant", "reasoning_content": "The user wants the weather.", "content": None,
         "tool_calls": [{"id": "call_w1", "type": "function",
                         "function": {"name": "get_weather", "arguments": "{\"city\": \"Beijing\"}"}}]}
last: dict = {}


async def chat(request: Request) -> StreamingResponse | JSONResponse:
    last.clear()
    last.update(await request.json())
    if not last.get("stream"):
        return JSONResponse({"id": "x", "object": "chat.completion", "secret_vendor_field": "must not reach clients",
                             "choices": [{"index": 0, "message": WHOLE, "finish_reason": "tool_calls"}],
                             "usage": USAGE})

    async def events():  # type: ignore[no-untyped-def]
        for step in SCRIPT:
            extra = {k: v for k, v in step.items() if k not in ("delta", "finish_reason")}
            choice = {"index": 0, "delta": step["delta"], "finish_reason": step.get("finish_reason")}
            yield f"data: {json.dumps({'id': 'x', 'object': 'chat.completion.chunk', 'choices': [choice], **extra})}\n\n"
        yield f"data: {json.dumps({'id': 'x', 'choices': [], 'usage': USAGE})}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


async def models(request: Request) -> JSONResponse:
    return JSONResponse({"object": "list", "data": [{"id": "scripted", "object": "model"}]})


async def last_request(request: Request) -> JSONResponse:
    return JSONResponse(last)


app = Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"]), Route("/v1/models", models),
                        Route("/last", last_request)])

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
