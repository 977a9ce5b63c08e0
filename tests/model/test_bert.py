"""The BERT sentence encoder against sentence-transformers on the same all-MiniLM-L6-v2 folder."""

from __future__ import annotations

import asyncio
import random

import numpy as np
import pytest

from glmaas.engines.registry import default_embedding_folder
from glmaas.engines.sentence import SentenceEncoder

WORDS = ("the a model vector search query document 向量 检索 模型 café naïve Zürich 東京 🙂 GPU CPU "
         "retrieval-augmented generation, price: $3.50/1M tokens; e-mail: a.b@example.com #tag "
         "don't won't isn't 12345 3.14159 x²+y²=z² (parenthesis) [brackets] {braces}").split()


def varied_texts(n: int, seed: int = 0) -> list[str]:
    """Short and long, ASCII and not, punctuation and digits; all within the model's 256 tokens."""
    rng = random.Random(seed)
    texts = ["Hello, world!", "a", "你好，世界", "  leading and trailing spaces  ", "UPPER lower MiXeD",
             "line one\nline two\ttabbed"]
    while len(texts) < n:
        texts.append(" ".join(rng.choice(WORDS) for _ in range(rng.choice((1, 3, 8, 20, 40, 60)))))
    return texts


@pytest.fixture(scope="module")
def encoder() -> SentenceEncoder:
    return SentenceEncoder("all-minilm-l6-v2", default_embedding_folder())


def test_vectors_equal_sentence_transformers(encoder: SentenceEncoder) -> None:
    from sentence_transformers import SentenceTransformer

    texts = varied_texts(300)
    framed = [encoder.frame(encoder.tokenize(t)) for t in texts]
    assert max(len(f) for f in framed) <= encoder.info.context_length  # no silent cut on either side
    reference = SentenceTransformer(str(default_embedding_folder()), device="cpu").encode(
        texts, normalize_embeddings=True, batch_size=64)
    ours = asyncio.run(encoder.embed(framed))
    assert ours.shape == (300, 384)
    assert float(np.abs(ours - reference).max()) < 1e-5


def test_framing_matches_the_tokenizer_with_special_tokens(encoder: SentenceEncoder) -> None:
    text = "Embeddings turn text into vectors."
    assert encoder.frame(encoder.tokenize(text)) == tuple(encoder.tokenizer.encode(text).ids)
