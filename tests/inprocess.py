"""glmaas's app served in the tests' own process: for tests of the protocol, error shapes, billing
arithmetic and limits, which need no server process.

It is the app `glmaas serve` builds, from the same options (`--model ID=mock:...`), on a fresh
SQLite file, its lifespan (housekeeping, shutdown) run on a background event loop; tests call it
through `httpx.ASGITransport` with ordinary synchronous httpx clients, so the same test reads the
same way against either kind of server. The operator's CLI runs in this process too.

httpx's ASGITransport hands a response back once the app has sent all of it: a stream arrives
whole, and the client cannot go away in the middle of one. The official SDKs take `client()` as
their `http_client` for what a whole stream shows (its chunks, their order, what they add up
to); tests that read a stream as it comes or disconnect, and those of crashes and replicas, use
a `glmaas serve` process (`tests.conftest.start_server`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
import subprocess
import threading
from collections.abc import Coroutine, Iterable
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any, TypeVar

import httpx

from glmaas.api.app import create_app
from glmaas.cli import build_parser, main
from glmaas.cli.serve import settings_from
from glmaas.engines.base import Engine
from glmaas.engines.registry import ModelRegistry
from glmaas.server import build_state
from tests.conftest import ServerUnderTest

T = TypeVar("T")
# Longest a request may take in process before the client gives up on it (the app's own request
# timeout, set by the tests, is far shorter).
REQUEST_LIMIT_S = 60.0


class AppTransport(httpx.BaseTransport):
    """A synchronous httpx transport that hands each request to the app on its event loop,
    through `httpx.ASGITransport`, from whichever thread sends it (so requests from many
    threads run concurrently, as they would in a server)."""

    def __init__(self, app: Any, loop: asyncio.AbstractEventLoop) -> None:
        # The app's own error handlers answer (and log) what it raises, as under uvicorn.
        self._asgi = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        self._loop = loop

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        request.read()  # the body, bytes from here on: readable on the loop too
        future = asyncio.run_coroutine_threadsafe(self._send(request), self._loop)
        try:
            return future.result(REQUEST_LIMIT_S)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise httpx.ReadTimeout(f"no response in {REQUEST_LIMIT_S:g} s", request=request) from None

    async def _send(self, request: httpx.Request) -> httpx.Response:
        response = await self._asgi.handle_async_request(request)
        content = await response.aread()
        return httpx.Response(response.status_code, headers=response.headers, content=content)


class AppServer(ServerUnderTest):
    """glmaas's app on `data_dir`, built from `glmaas serve` options, until `stop()`."""

    base_url = "http://glmaas.test"
    openai_url = f"{base_url}/v1"
    zhipu_url = f"{base_url}/api/paas/v4"

    def __init__(self, data_dir: Path, *serve_args: str, engines: Iterable[Engine] = ()) -> None:
        """`engines`: models served beside those of `serve_args`, for engines no `--model` spec
        can describe (a mock writing in a given chat template, a stand-in engine)."""
        self.data_dir, self.env = data_dir, None
        options = build_parser().parse_args(["serve", "--data-dir", str(data_dir), *serve_args])
        state = build_state(settings_from(options))
        if engines:
            registry = state.registry
            served = {info.model_id: registry.get(info.model_id) or registry.embedder(info.model_id)
                      for info in registry.models()}
            state.registry = ModelRegistry({**served, **{e.info.model_id: e for e in engines}})
        self.app = create_app(state)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="glmaas-app", daemon=True)
        self._thread.start()
        self._lifespan = self.app.router.lifespan_context(self.app)
        self._run(self._lifespan.__aenter__())
        self.transport = AppTransport(self.app, self._loop)

    def _run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def client(self, **options) -> httpx.Client:  # type: ignore[no-untyped-def]
        return httpx.Client(base_url=self.base_url, transport=self.transport, **options)

    def alive(self) -> bool:
        return self._thread.is_alive() and self._loop.is_running()

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """`glmaas ARGS --data-dir DATA_DIR`, run in this process; its output as a process's."""
        argv = [*args, "--data-dir", str(self.data_dir)]
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            try:
                code = main(argv)
            except SystemExit as exc:  # argparse refusing the options
                code = exc.code if isinstance(exc.code, int) else 1
        done = subprocess.CompletedProcess(["glmaas", *argv], code, out.getvalue(), err.getvalue())
        if check:
            done.check_returncode()
        return done

    def stop(self) -> None:
        """Run the app's shutdown (engines closed, replica retired, store disposed); end the loop."""
        if not self.alive():
            return
        self._run(self._lifespan.__aexit__(None, None, None))
        self._run(_cancel_the_rest())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


async def _cancel_the_rest() -> None:
    """Cancel what still runs on the loop (generations of requests nobody waits for)."""
    rest = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    for task in rest:
        task.cancel()
    await asyncio.gather(*rest, return_exceptions=True)
