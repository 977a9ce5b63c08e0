"""A byte-level BPE tokenizer with the GLM special tokens, trained with HF `tokenizers`.

Byte-level means any text encodes without <unk>. The special tokens are added as whole tokens, so a
literal "[MASK]" typed in a prompt encodes to the mask id. The tokenizer is saved as
`tokenizer.json` next to every checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

# Order fixes the ids: [PAD] = 0, <|endoftext|> = 1, ...
SPECIAL_TOKENS = [
    "[PAD]",
    "<|endoftext|>",  # end of document (EOD)
    "[CLS]",
    "[MASK]",  # a short blank (token-level infilling)
    "[sMASK]",  # a sentence blank
    "[gMASK]",  # a suffix to generate (document-level, left to right)
    "<|startofpiece|>",  # [S]: opens every blank in Part B
    "<|endofpiece|>",  # [E]: closes a blank
]

SENTENCE_END_CHARS = set(".?!;:。？！；…\n")


@dataclass(frozen=True)
class SpecialIds:
    """Ids of the GLM special tokens; objectives and generation speak these, not strings."""

    pad: int = 0
    eod: int = 1
    cls: int = 2
    mask: int = 3
    smask: int = 4
    gmask: int = 5
    sop: int = 6
    eop: int = 7


class GLMTokenizer:
    """Wraps a `tokenizers.Tokenizer`; adds the GLM ids and the sentence-end table."""

    def __init__(self, tokenizer):
        self._tok = tokenizer
        ids = [tokenizer.token_to_id(t) for t in SPECIAL_TOKENS]
        if any(i is None for i in ids):
            raise ValueError("tokenizer lacks the GLM special tokens")
        self.special = SpecialIds(*ids)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(texts)]

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=skip_special)

    def token_bytes(self) -> list[bytes]:
        """The bytes each token id stands for (special tokens: none), for decoding a stream token
        by token without splitting a character: byte-level BPE writes byte b as GPT-2's
        printable stand-in for it."""
        to_byte = {ch: b for b, ch in enumerate(_byte_level_alphabet())}
        specials = set(SPECIAL_TOKENS)
        out = []
        for token_id in range(self.vocab_size):
            token = self._tok.id_to_token(token_id) or ""
            out.append(b"" if token in specials else bytes(to_byte[c] for c in token if c in to_byte))
        return out

    def sentence_end_ids(self) -> list[int]:
        """Ids of tokens that end a sentence (glm.md §1.3: `. ? ! ; :` ... or a newline)."""
        out = []
        for token_id in range(self.vocab_size):
            text = self._tok.decode([token_id])
            if any(c in SENTENCE_END_CHARS for c in text):
                out.append(token_id)
        return out

    def save(self, path: str | Path) -> None:
        self._tok.save(str(path))

    @classmethod
    def load(cls, path: str | Path) -> "GLMTokenizer":
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_file(str(path)))


def _byte_level_alphabet() -> list[str]:
    """GPT-2's `bytes_to_unicode`: the character that stands for each byte 0..255, in order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = [], 0
    for b in range(256):
        if b in printable:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def train_tokenizer(texts: Iterable[str], vocab_size: int = 4096) -> GLMTokenizer:
    """Train a byte-level BPE on `texts`; the special tokens get ids 0..7."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return GLMTokenizer(tok)
