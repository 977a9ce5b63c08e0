"""Checks for values that arrive from outside, run at the edge before anything else sees them.

Pure functions over plain values (no web framework): each returns the value when it is acceptable
and raises `InvalidField`, a `ValueError` naming the offending field, when it is not.

- `check_text`: a string is a sequence of Unicode scalar values. Python's `json` turns `"\\ud800"`
  (a lone or reversed UTF-16 surrogate) into a `str` that no UTF-8 encoder, tokenizer or database
  driver will take, so such a string is refused before it travels further.
- `check_request_id`: an id the client chose is copied into the `x-request-id` header and the logs,
  so it is restricted to a charset safe in both (`[A-Za-z0-9._:-]`) and to 1..128 characters.
- `check_json_shape`: a body's nesting depth and the length of its numbers are bounded before
  `json.loads` runs; see its docstring for why a pre-scan.
"""

from __future__ import annotations

import json
import re

MAX_REQUEST_ID_CHARS = 128
MAX_JSON_DEPTH = 64
MAX_NUMBER_DIGITS = 100

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]+")
# Outside strings, the bytes that matter: a quote opens a string, brackets nest, and a run of
# number characters is one number (the letters of true/false/null only ever make short runs).
_TOKEN = re.compile(rb'["\[\]{}]|[-+0-9.eE]+')
_DIGITS = b"0123456789"


class InvalidField(ValueError):
    """A value from outside is not acceptable; the message names the field and says why."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def check_text(value: str, field: str) -> str:
    """`value` when it is valid Unicode (no surrogate code points), else `InvalidField`."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = ord(value[exc.start])
        raise InvalidField(
            field, f"{field} is not valid Unicode: it holds a lone UTF-16 surrogate (U+{bad:04X}) at "
                   f"character {exc.start}. Send text as UTF-8, or escape a character outside the "
                   f"Basic Multilingual Plane as a high surrogate followed by a low one.") from None
    return value


def check_request_id(value: object, field: str = "request_id") -> str:
    """`value` when it is an id safe to put in a header and a log line, else `InvalidField`."""
    if not isinstance(value, str):
        raise InvalidField(field, f"{field} must be a string.")
    if not 1 <= len(value) <= MAX_REQUEST_ID_CHARS:
        raise InvalidField(field, f"{field} must be 1 to {MAX_REQUEST_ID_CHARS} characters long; "
                                  f"it has {len(value)}.")
    if not _REQUEST_ID.fullmatch(value):
        raise InvalidField(field, f"{field} may hold only the letters A-Z and a-z, digits and "
                                  f"the characters . _ : -")
    return value


def check_json_shape(raw: bytes, *, max_depth: int = MAX_JSON_DEPTH,
                     max_number_digits: int = MAX_NUMBER_DIGITS, field: str = "body") -> bytes:
    """`raw` when its JSON nests at most `max_depth` arrays/objects deep and no number in it has
    more than `max_number_digits` digits, else `InvalidField`. It does not check that `raw` is
    valid JSON; `json.loads` does that afterwards, and can then no longer go deep.

    Why a pre-scan rather than a parser limit: Python's `json` has no depth or number-size
    option. Its decoder recurses once per nesting level, so a body of a few thousand `[` raises
    `RecursionError` (not a `JSONDecodeError`), and only after the whole recursion; an integer of
    more than 4300 digits raises a bare `ValueError`; a long float parses silently to `inf` or
    rounds. Catching those afterwards would mean catching exceptions that bugs raise too. The
    scan is linear: it visits only quotes, brackets and number runs (strings are skipped with
    `bytes.find`), so it costs little next to parsing.

    The scan reads UTF-8 (RFC 8259 §8.1), in which the bytes of `"`, `\\`, brackets and digits
    never occur inside another character; a body `json.loads` would decode as UTF-16 or UTF-32
    is refused.
    """
    if json.detect_encoding(raw) not in ("utf-8", "utf-8-sig"):
        raise InvalidField(field, f"The {field} must be JSON encoded as UTF-8.")
    depth = 0
    pos = 0
    while (match := _TOKEN.search(raw, pos)) is not None:
        token = match.group()
        pos = match.end()
        if token == b'"':
            pos = _string_end(raw, pos)
            if pos < 0:
                break  # an unterminated string: nothing after it is structure, json.loads refuses it
        elif token in (b"[", b"{"):
            depth += 1
            if depth > max_depth:
                raise InvalidField(field, f"The {field} nests JSON arrays and objects more than "
                                          f"{max_depth} levels deep.")
        elif token in (b"]", b"}"):
            depth -= 1
        else:
            digits = len(token) - len(token.translate(None, _DIGITS))
            if digits > max_number_digits:
                raise InvalidField(field, f"The {field} holds a number of {digits} digits; at most "
                                          f"{max_number_digits} are allowed.")
    return raw


def _string_end(raw: bytes, start: int) -> int:
    """The index just past the quote closing the string whose body begins at `start`, or -1."""
    pos = start
    while (quote := raw.find(b'"', pos)) >= 0:
        backslashes = quote - len(raw[pos:quote].rstrip(b"\\")) - pos
        if backslashes % 2 == 0:  # not escaped
            return quote + 1
        pos = quote + 1
    return -1
