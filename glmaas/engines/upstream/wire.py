"""What goes over the wire to an upstream and what comes back: the request body in the
upstream's dialect, its authorization header, and its stream chunks read into `ChatDelta`s.

Both dialects stream OpenAI-shaped chunks; they differ in what the request may carry (Zhipu
takes `do_sample` instead of a zero temperature, `thinking`, and always reports usage) and in
how a fault mid-stream is told (`finish_reason: network_error` on Zhipu, an `error` object on
OpenAI-compatible servers). Only the fields named here go up or come down; anything else an
upstream sends is dropped.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Any

import jwt

from glmaas.engines.base import TokenLogprob, Usage
from glmaas.engines.chat import ChatCall, ChatDelta, TextCall, ToolCallPiece
from glmaas.engines.tool_calls import ToolCall
from glmaas.engines.upstream.config import UpstreamConfig

# Sampling fields passed up by name, when the client set them.
OPENAI_SAMPLING = ("temperature", "top_p", "seed", "stop", "frequency_penalty", "presence_penalty",
                   "logit_bias", "top_k", "min_p", "repetition_penalty")
ZHIPU_SAMPLING = ("temperature", "top_p", "seed", "stop")
# Finish reasons that mean the upstream failed, not that the reply ended.
FAULT_FINISHES = {"network_error", "error"}
JWT_TTL_S = 210  # what the Zhipu SDKs sign for


class UpstreamFault(Exception):
    """The upstream reported a failure inside its stream."""


def request_body(config: UpstreamConfig, call: ChatCall, model: str, key: str | None = None) -> dict[str, Any]:
    """The chat request for this upstream (`key`: its API key, which keys the cache salt): streamed
    when the client streams; otherwise asked whole, since a whole reply carries the upstream's exact
    usage where some servers (llama.cpp's) send none in a stream."""
    body: dict[str, Any] = {"model": config.model or model, "messages": call.messages,
                            "max_tokens": call.max_tokens}
    if call.stream:
        body["stream"] = True
    for name in ("tools", "tool_choice", "response_format"):
        value = getattr(call, name)
        if value is not None:
            body[name] = value
    if call.user is not None:
        body["user"] = call.user
    if config.dialect == "zhipu":
        body.update({k: v for k, v in call.sampling.items() if k in ZHIPU_SAMPLING})
        if body.get("temperature") == 0:
            # Zhipu's way to say greedy; a zero temperature is outside its range.
            del body["temperature"]
            body.pop("top_p", None)
            body["do_sample"] = False
        if call.thinking is not None:
            body["thinking"] = {"type": "enabled" if call.thinking else "disabled"}
        return body
    body.update({k: v for k, v in call.sampling.items() if k in OPENAI_SAMPLING})
    if call.stream:
        body["stream_options"] = {"include_usage": True}
    if config.cache_salt and call.tenant:
        body["cache_salt"] = cache_salt(call.tenant, key)
    if call.logprobs is not None:
        body["logprobs"] = True
        body["top_logprobs"] = call.logprobs
    if call.thinking is not None:
        # vLLM and SGLang take the GLM templates' switch this way.
        body["chat_template_kwargs"] = {"enable_thinking": call.thinking}
    return body


def text_request_body(config: UpstreamConfig, call: TextCall, model: str) -> dict[str, Any]:
    """The legacy completion request for an OpenAI-compatible upstream: streamed (with usage)
    when the client streams, else asked whole."""
    body: dict[str, Any] = {"model": config.model or model, "prompt": call.prompt, "max_tokens": call.max_tokens}
    if call.stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    optional = {"suffix": call.suffix, "echo": call.echo or None, "logprobs": call.logprobs, "user": call.user}
    body.update({k: v for k, v in optional.items() if v is not None})
    body.update({k: v for k, v in call.sampling.items() if k in OPENAI_SAMPLING})
    return body


def cache_salt(tenant: str, key: str | None) -> str:
    """A tenant's prefix-cache salt: 256 bits no client can choose or guess (keyed by the
    upstream's key when there is one; glmaas sets it, so a tenant cannot send another's anyway)."""
    digest = hmac.new((key or "glmaas-cache-salt").encode(), tenant.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def authorization(config: UpstreamConfig, key: str | None) -> dict[str, str]:
    """The Authorization header: the key as a bearer token, or (Zhipu, `auth=jwt`) a JWT signed
    with it the way the Zhipu SDKs sign (HS256, millisecond `exp`)."""
    if key is None:
        return {}
    if config.auth == "jwt":
        key_id, _, secret = key.partition(".")
        now_ms = int(time.time() * 1000)
        token = jwt.encode({"api_key": key_id, "exp": now_ms + JWT_TTL_S * 1000, "timestamp": now_ms},
                           secret, algorithm="HS256", headers={"alg": "HS256", "sign_type": "SIGN"})
        return {"authorization": f"Bearer {token}"}
    return {"authorization": f"Bearer {key}"}


@dataclass(frozen=True)
class Chunk:
    """What one stream chunk says: output (text, reasoning, tool-call pieces, logprobs), the
    usage, the finish reason."""

    delta: ChatDelta | None = None
    tool_pieces: tuple[ToolCallPiece, ...] = ()
    usage: Usage | None = None
    finish_reason: str | None = None


class ToolCallAssembler:
    """Joins the pieces of streamed tool calls into whole calls, by index."""

    def __init__(self) -> None:
        self._calls: dict[int, dict[str, str]] = {}

    def push(self, piece: ToolCallPiece) -> None:
        call = self._calls.setdefault(piece.index, {"id": "", "name": "", "arguments": ""})
        call["id"] = piece.id or call["id"]
        call["name"] = piece.name or call["name"]
        call["arguments"] += piece.arguments

    def calls(self) -> tuple[ToolCall, ...]:
        return tuple(ToolCall(name=c["name"], arguments=c["arguments"] or "{}",
                              id=c["id"] or f"call_{secrets.token_hex(12)}")
                     for _, c in sorted(self._calls.items()))


def read_chunk(chunk: dict[str, Any]) -> Chunk:
    """One stream chunk, read. Raises `UpstreamFault` when the chunk says the upstream failed."""
    if "error" in chunk:
        error = chunk["error"] if isinstance(chunk["error"], dict) else {}
        raise UpstreamFault(str(error.get("message", "the upstream reported an error"))[:300])
    usage = read_usage(chunk.get("usage"))
    choices = chunk.get("choices") or []
    if not choices:
        return Chunk(usage=usage)
    choice = choices[0] if isinstance(choices[0], dict) else {}
    finish = choice.get("finish_reason")
    if finish in FAULT_FINISHES:
        raise UpstreamFault(f"the upstream ended its stream with {finish}")
    # A legacy completion's chunk carries `text` where a chat chunk carries `delta`.
    delta = choice.get("delta") or ({"content": choice["text"]} if "text" in choice else {})
    text = delta.get("content") or ""
    reasoning = delta.get("reasoning_content") or delta.get("reasoning") or ""
    pieces = tuple(_tool_call(i, c) for i, c in enumerate(delta.get("tool_calls") or []) if isinstance(c, dict))
    logprobs = _logprobs(choice.get("logprobs"))
    output = ChatDelta(text=text, reasoning=reasoning, logprobs=logprobs) if text or reasoning or logprobs else None
    return Chunk(output, pieces, usage, finish)


def as_chunk(reply: dict[str, Any]) -> dict[str, Any]:
    """A whole (non-streamed) reply in the shape of one stream chunk that holds all of it, so that
    it is read like a stream: its message as the delta, its finish reason and usage."""
    if "error" in reply:
        return reply
    choices = reply.get("choices") or []
    choice = choices[0] if choices and isinstance(choices[0], dict) else {}
    message = choice.get("message") or ({"content": choice["text"]} if "text" in choice else {})
    return {"choices": [{"index": 0, "delta": message, "logprobs": choice.get("logprobs"),
                         "finish_reason": choice.get("finish_reason")}],
            "usage": reply.get("usage")}


def read_usage(raw: Any) -> Usage | None:
    if not isinstance(raw, dict) or "prompt_tokens" not in raw:
        return None
    details = raw.get("prompt_tokens_details") or {}
    completion = int(raw.get("completion_tokens") or 0)
    reasoning = int((raw.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0)
    # Reasoning tokens are a part of the completion: never more than it, so that what the
    # client is told adds up with what is billed.
    return Usage(prompt_tokens=int(raw["prompt_tokens"]), completion_tokens=completion,
                 cached_prompt_tokens=int(details.get("cached_tokens") or 0),
                 reasoning_tokens=min(max(reasoning, 0), completion))


def _tool_call(position: int, raw: dict[str, Any]) -> ToolCallPiece:
    function = raw.get("function") or {}
    return ToolCallPiece(index=int(raw.get("index", position)), id=raw.get("id"), name=function.get("name"),
                         arguments=function.get("arguments") or "")


def _logprobs(raw: Any) -> tuple[TokenLogprob, ...] | None:
    """OpenAI-form logprobs (`{"content": [{token, logprob, top_logprobs}]}`, or a legacy
    completion's parallel lists); upstream token ids are unknown, so they read -1."""
    if isinstance(raw, dict) and isinstance(raw.get("tokens"), list):
        return _legacy_logprobs(raw)
    if not isinstance(raw, dict) or not raw.get("content"):
        return None
    return tuple(
        TokenLogprob(-1, str(item.get("token", "")), float(item.get("logprob", 0.0)),
                     tuple((-1, str(t.get("token", "")), float(t.get("logprob", 0.0)))
                           for t in item.get("top_logprobs") or []))
        for item in raw["content"] if isinstance(item, dict))


def _legacy_logprobs(raw: dict[str, Any]) -> tuple[TokenLogprob, ...] | None:
    """A legacy completion's `{tokens, token_logprobs, top_logprobs}`."""
    tokens, values, tops = raw.get("tokens") or [], raw.get("token_logprobs") or [], raw.get("top_logprobs") or []
    out = []
    for i, token in enumerate(tokens):
        value = values[i] if i < len(values) and isinstance(values[i], (int, float)) else 0.0
        top = tops[i] if i < len(tops) and isinstance(tops[i], dict) else {}
        out.append(TokenLogprob(-1, str(token), float(value),
                                tuple((-1, str(t), float(lp)) for t, lp in top.items()
                                      if isinstance(lp, (int, float)))))
    return tuple(out) or None
