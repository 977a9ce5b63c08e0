"""Our own token count of what an upstream reads and writes: used to hold for a request before
the upstream answers, and to bill when it reports no usage (marked `estimated`).

With `tokenizer=` (a tokenizer.json, or a GGUF file whose vocabulary is read alone) the count is
the model's tokenizer's; without one it is a byte-based guess (about one token per three UTF-8
bytes, which over-counts English and is close for Chinese).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Tokens a chat template adds around each message (role markers, separators).
PER_MESSAGE_OVERHEAD = 4


def _bytes_guess(text: str) -> int:
    return -(-len(text.encode("utf-8")) // 3)


class TokenCounter:
    """Counts tokens of text with a tokenizer file, or guesses from bytes."""

    def __init__(self, tokenizer: str | None = None) -> None:
        self._count: Callable[[str], int] = _bytes_guess
        if tokenizer:
            self._count = _load(Path(tokenizer).expanduser())

    def text(self, text: str) -> int:
        return self._count(text) if text else 0

    def messages(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> int:
        """The prompt tokens of a chat, with a margin per message for its template."""
        total = 0
        for message in messages:
            total += PER_MESSAGE_OVERHEAD + self.text(str(message.get("content") or ""))
            if message.get("tool_calls"):
                total += self.text(json.dumps(message["tool_calls"], ensure_ascii=False))
        if tools:
            total += self.text(json.dumps(tools, ensure_ascii=False))
        return total + 1


def _load(path: Path) -> Callable[[str], int]:
    if not path.is_file():
        raise ValueError(f"no tokenizer file at {path}")
    if path.suffix == ".gguf":
        from llama_cpp import Llama

        vocab = Llama(str(path), vocab_only=True, verbose=False)
        return lambda text: len(vocab.tokenize(text.encode("utf-8"), add_bos=False, special=False))
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.no_padding()  # a file may pad or cut every text to a fixed length: count the text
    tokenizer.no_truncation()
    return lambda text: len(tokenizer.encode(text, add_special_tokens=False).ids)
