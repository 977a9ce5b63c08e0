"""Serving an embedding request: the inputs its model reads (tokenized, framed, checked against
the model's length), the work run through the metered run, and the response in either encoding.

Lengths: an input longer than the model reads (`info.context_length` framed tokens, 256 for
all-MiniLM-L6-v2) is refused with a 400, unless the request sets the extension `truncate: true`;
then its tokens are cut at the end so that the framed input fits, and usage counts what was read.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

import numpy as np

from glmaas.api.embeddings.protocol import (
    Embedding,
    EmbeddingRequest,
    EmbeddingResponse,
    EmbeddingUsage,
)
from glmaas.api.errors import ApiError, ErrorKind
from glmaas.api.metered import MeteredRun
from glmaas.api.state import AppState
from glmaas.engines.base import EngineError
from glmaas.engines.embedding import EmbeddingModel, Vectors
from glmaas.platform.metered import GenerationTimeout


@dataclass(frozen=True)
class EmbeddingInputs:
    """A request's inputs made ready for its model: framed token ids, one tuple per input."""

    model: EmbeddingModel
    framed: tuple[tuple[int, ...], ...]

    @property
    def prompt_tokens(self) -> int:
        return sum(len(ids) for ids in self.framed)


def prepare(state: AppState, req: EmbeddingRequest) -> EmbeddingInputs:
    """Look the model up and tokenize, frame and check every input; raises `ApiError` when the
    model is unknown, `dimensions` cannot be met, or an input is out of range or too long."""
    model = state.registry.embedder(req.model)
    if model is None:
        message = (f"The model {req.model!r} is not an embedding model." if state.registry.get(req.model)
                   else f"The model {req.model!r} does not exist.")
        raise ApiError(ErrorKind.MODEL_NOT_FOUND, message, param="model")
    if req.dimensions is not None and req.dimensions != model.dimensions:
        raise ApiError(ErrorKind.INVALID_REQUEST,
                       f"The model {req.model} makes {model.dimensions}-dimensional vectors and cannot "
                       f"shorten them; leave dimensions out.", param="dimensions")
    limit = model.info.context_length
    room = limit - len(model.frame(()))  # tokens left for content once the special tokens are in
    framed = []
    for n, item in enumerate(req.inputs()):
        if isinstance(item, str):
            ids = model.tokenize(item)
        else:
            ids = item
            bad = next((t for t in ids if not 0 <= t < model.vocab_size), None)
            if bad is not None:
                raise ApiError(ErrorKind.INVALID_REQUEST,
                               f"Input {n} holds the token id {bad}, outside the vocabulary of {req.model} "
                               f"(0..{model.vocab_size - 1}).", param="input")
        if len(ids) > room:
            if not req.truncate:
                raise ApiError(ErrorKind.PROMPT_TOO_LONG,
                               f"Input {n} has {len(ids) + limit - room} tokens; {req.model} reads at most "
                               f"{limit}. Shorten it, or send \"truncate\": true to cut it.", param="input")
            ids = ids[:room]
        framed.append(model.frame(ids))
    return EmbeddingInputs(model, tuple(framed))


async def embed(run: MeteredRun, inputs: EmbeddingInputs) -> Vectors:
    """The vectors, computed under the run (which settles once however this ends)."""
    try:
        return await run.compute(inputs.model.embed(inputs.framed))
    except (EngineError, GenerationTimeout) as exc:
        raise ApiError(ErrorKind.ENGINE_ERROR, f"The model failed: {exc}") from None


def _encode(vector: np.ndarray, encoding: str | None) -> list[float] | str:
    if encoding == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode()
    return vector.tolist()


def respond(req: EmbeddingRequest, inputs: EmbeddingInputs, vectors: Vectors) -> EmbeddingResponse:
    data = [Embedding(index=i, embedding=_encode(v, req.encoding_format)) for i, v in enumerate(vectors)]
    usage = EmbeddingUsage(prompt_tokens=inputs.prompt_tokens, total_tokens=inputs.prompt_tokens)
    return EmbeddingResponse(data=data, model=req.model, usage=usage)
