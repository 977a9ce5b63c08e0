"""The models this replica serves and the state of their engines, as the console shows them."""

from __future__ import annotations

from dataclasses import dataclass, field

from glmaas.api.state import AppState


@dataclass(frozen=True)
class Upstream:
    address: str  # dialect+URL, never a key
    breaker: str  # closed (healthy), open (ejected) or half_open (probing)
    outstanding: int


@dataclass(frozen=True)
class ServedModel:
    model_id: str
    purpose: str  # chat or embeddings
    engine: str
    context_length: int
    slots: int | None  # sequences the engine decodes together
    in_flight: int  # requests this replica has admitted and not yet settled
    background: int  # batch lines and async tasks running on it now
    upstreams: list[Upstream] = field(default_factory=list)


def served_models(state: AppState) -> list[ServedModel]:
    models = []
    for info in state.registry.models():
        engine = state.registry.get(info.model_id)
        served = engine if engine is not None else state.registry.embedder(info.model_id)
        upstreams = [Upstream(m.config.describe(), m.state, m.outstanding) for m in getattr(engine, "members", [])]
        models.append(ServedModel(
            info.model_id, "chat" if engine is not None else "embeddings", type(served).__name__,
            info.context_length, state.gate.slots(info.model_id) if engine is not None else None,
            state.meter.open_by_model.get(info.model_id, 0), state.gate.running.get(info.model_id, 0), upstreams))
    return models
