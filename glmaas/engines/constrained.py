"""Grammar-constrained decoding: an `OutputConstraint` becomes, for each sequence, a matcher that
says which tokens may come next; the sampler sets every other token's logit to -inf.

Built on llguidance (Microsoft's Rust grammar engine, the one llama.cpp links as its
`LLAMA_LLGUIDANCE` backend), chosen over xgrammar for four reasons (the wheels and their APIs as
the package index serves them today):

- It installs alone: one abi3 wheel with no dependencies. xgrammar's wheel requires torch,
  transformers and triton, none of which the serving path otherwise needs (and triton alone
  is larger than everything else glmaas installs).
- It speaks llama.cpp: `llguidance.llamacpp` builds its tokenizer from a `llama_vocab` pointer,
  so the grammar sees exactly the token bytes the engine samples, special tokens included.
  xgrammar wants a Hugging Face tokenizer or a vocabulary in one of its own encodings.
- Masks are numpy bitmasks (`unsafe_compute_mask_ptr` writes one row of 32-bit words), so they
  apply to the logits row llama.cpp leaves in its buffer without any tensor library.
- It compiles per request without a warm-up: masks are computed lazily from a lexer and an
  Earley parser (about 55 µs a token at the median for a small JSON schema here, see
  docs/performance.md), where xgrammar first compiles a per-grammar cache of token masks, which
  pays off when many requests share one schema.

Unsupported JSON-schema keywords are errors, not silently dropped (`lenient` is off), so a schema
we cannot enforce is refused before generation with `ConstraintError` naming what is wrong.

JSON is generated with one space after each `,` and `:` and no other whitespace: free whitespace
lets a small model wander into newlines and indentation until `max_tokens` runs out.

A sequence's next mask depends only on the tokens it has taken, so the decode loop computes the
masks of a step on a helper thread while llama.cpp decodes (`GrammarMatcher.prepare`); both
release the GIL, so the grammar's cost hides behind the model's.
"""

from __future__ import annotations

import json
import threading
import warnings
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

import llguidance
import numpy as np

from glmaas.engines.base import InvalidRequest, OutputConstraint

_JSON_OPTIONS: dict[str, Any] = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": ",
                                 "lenient": False}
_ANY_JSON_OBJECT = {"type": "object"}


class ConstraintError(InvalidRequest):
    """The constraint cannot be enforced: unsupported JSON-schema features, a schema that is not
    valid JSON, or a grammar that does not parse. The message names the problem."""


def json_schema_constraint(schema: dict[str, Any] | str) -> OutputConstraint:
    """A constraint for JSON matching `schema` (a dict or its JSON text)."""
    return OutputConstraint("json_schema", schema if isinstance(schema, str) else json.dumps(schema))


def framed_json_constraint(prefix: str, schema: dict[str, Any], suffix: str = "") -> OutputConstraint:
    """A constraint for `prefix`, then JSON matching `schema`, then `suffix`, verbatim: e.g. a
    named tool call `<tool_call>{"name": "f", "arguments": ` + arguments schema + `}</tool_call>`.

    Written in llguidance's Lark dialect (the `ebnf` kind), whose `%json` embeds a JSON schema."""
    parts = [json.dumps(text) for text in (prefix,) if text]
    parts.append("value")
    parts += [json.dumps(text) for text in (suffix,) if text]
    options = {**schema, "x-guidance": _JSON_OPTIONS} if "x-guidance" not in schema else schema
    lark = f"start: {' '.join(parts)}\nvalue: %json {json.dumps(options)}\n"
    return OutputConstraint("ebnf", lark)


@lru_cache(maxsize=256)
def grammar_of(constraint: OutputConstraint) -> str:
    """The llguidance grammar of `constraint`, checked; raises `ConstraintError` when it cannot be
    enforced. Needs no tokenizer, so the API can refuse a request before admitting it."""
    if constraint.kind == "ebnf":
        grammar = llguidance.LLMatcher.grammar_from_lark(constraint.source)
    else:
        if constraint.kind == "json_object":
            schema: Any = _ANY_JSON_OBJECT
        else:
            try:
                schema = json.loads(constraint.source)
            except json.JSONDecodeError as exc:
                raise ConstraintError(f"the JSON schema is not valid JSON: {exc}") from None
            if not isinstance(schema, dict):
                raise ConstraintError("the JSON schema must be a JSON object")
        grammar = llguidance.LLMatcher.grammar_from_json_schema(schema, overrides=_JSON_OPTIONS)
    failed, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar)
    if failed:
        raise ConstraintError(_plain(messages[0] if messages else "the grammar is invalid"))
    return grammar


def check(constraint: OutputConstraint) -> None:
    """Raise `ConstraintError` if `constraint` cannot be enforced."""
    grammar_of(constraint)


def _plain(message: str) -> str:
    # llguidance prefixes its errors with their origin; keep the sentence a client can act on.
    for marker in ("Unimplemented keys:", "Unknown format", "Unsupported"):
        at = message.find(marker)
        if at >= 0:
            return "unsupported JSON schema features: " + message[at:].strip()
    return message.strip()


def _first_line(error: str) -> str:
    # A matcher's error goes on with its parser state and the whole grammar: not for a client.
    return error.strip().split("\n", 1)[0]


class GrammarMatcher:
    """One sequence's position in its grammar: which tokens may come next, and the tokens taken."""

    def __init__(self, matcher: llguidance.LLMatcher, n_vocab: int) -> None:
        self._matcher = matcher
        self._n_vocab = n_vocab
        self._bits = np.zeros((n_vocab + 31) // 32, dtype=np.int32)
        self._mask: np.ndarray | None = None  # of the current position, once computed

    def prepare(self) -> None:
        """Compute the mask of the current position now (from any one thread at a time)."""
        if self._mask is None:
            self._matcher.unsafe_compute_mask_ptr(self._bits.ctypes.data, self._bits.nbytes)
            self._mask = np.unpackbits(self._bits.view(np.uint8), bitorder="little")[: self._n_vocab].view(bool)

    def allowed(self) -> np.ndarray:
        """A boolean row over the vocabulary: True where the token keeps the output in the grammar."""
        self.prepare()
        assert self._mask is not None
        return self._mask

    def accept(self, token: int) -> None:
        """Advance past `token` (one the mask allowed)."""
        self._mask = None
        if not self._matcher.consume_token(token):
            raise ConstraintError(f"the grammar rejected token {token}: {_first_line(self._matcher.get_error())}")

    @property
    def complete(self) -> bool:
        """The output is a whole sentence of the grammar and nothing more may follow."""
        return self._matcher.is_stopped()


class Grammars:
    """Matchers for one model's vocabulary. The llguidance tokenizer (all token bytes, ~1 s to
    build for a 50k vocabulary) is made once, on the first constrained request."""

    def __init__(self, make_tokenizer: Callable[[], llguidance.LLTokenizer], n_vocab: int) -> None:
        self._make_tokenizer = make_tokenizer
        self._tokenizer: llguidance.LLTokenizer | None = None
        self._lock = threading.Lock()
        self.n_vocab = n_vocab

    @classmethod
    def for_llamacpp(cls, vocab: Any, n_vocab: int, eos_tokens: Callable[[], Sequence[int]]) -> Grammars:
        """Matchers over a llama.cpp vocabulary; `eos_tokens()` (the end-of-generation tokens)
        may end the output once it is complete."""
        import llguidance.llamacpp

        def make() -> llguidance.LLTokenizer:
            with warnings.catch_warnings():  # it reads token attributes through a deprecated alias
                warnings.simplefilter("ignore", DeprecationWarning)
                return llguidance.llamacpp.lltokenizer_from_vocab(vocab, eos_token=list(eos_tokens()))

        return cls(make, n_vocab)

    def tokenizer(self) -> llguidance.LLTokenizer:
        with self._lock:
            if self._tokenizer is None:
                self._tokenizer = self._make_tokenizer()
            return self._tokenizer

    def matcher(self, constraint: OutputConstraint) -> GrammarMatcher:
        """A fresh matcher at the start of `constraint`; raises `ConstraintError`. Blocking (the
        first call builds the tokenizer): call it off the event loop."""
        matcher = llguidance.LLMatcher(self.tokenizer(), grammar_of(constraint), log_level=0)
        if matcher.is_error():
            raise ConstraintError(_plain(_first_line(matcher.get_error())))
        return GrammarMatcher(matcher, self.n_vocab)
