"""Server-sent events as both dialects frame them: `data: <json>` events, then `data: [DONE]`."""

from __future__ import annotations

import json

from pydantic import BaseModel

SSE_DONE = b"data: [DONE]\n\n"


def sse_event(body: BaseModel | dict) -> bytes:
    """One `data:` event; compact JSON, UTF-8 unescaped as the platforms send it."""
    if isinstance(body, BaseModel):
        payload = body.model_dump_json().encode()
    else:
        payload = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
    return b"data: " + payload + b"\n\n"
