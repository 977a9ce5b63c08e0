"""Checks for values that arrive from outside, run at the edge before anything else sees them.

Pure functions over plain values (no web framework): each returns the value when it is acceptable
and raises `InvalidField`, a `ValueError` naming the offending field, when it is not.

- `check_text`: a string is a sequence of Unicode scalar values. Python's `json` turns `"\\ud800"`
  (a lone or reversed UTF-16 surrogate) into a `str` that no UTF-8 encoder, tokenizer or database
  driver will take, so such a string is refused before it travels further.
- `check_request_id`: an id the client chose is copied into the `x-request-id` header and the logs,
  so it is restricted to a charset safe in both (`[A-Za-z0-9._:-]`) and to 1..128 characters.
- `check_end_user_id`: an end user's id (`user_id`, `user`) may reach a log line too: printable
  ASCII with no spaces (`[!-~]`, room for e-mail addresses and base64 hashes), 1..256 characters.
- `check_json_shape`: a body's nesting depth and the length of its numbers are bounded before
  `json.loads` runs; see its docstring for why a pre-scan.
- `load_json`: the whole edge for a JSON body: the shape scan, then `json.loads` with `NaN`,
  `Infinity` and floats that overflow to infinity refused, then `check_strings` over every key and
  string in it.
"""

from __future__ import annotations

import functools
import json
import math
import re
from itertools import accumulate

MAX_REQUEST_ID_CHARS = 128
MAX_END_USER_ID_CHARS = 256
MAX_JSON_DEPTH = 64
MAX_NUMBER_DIGITS = 100

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]+")
_END_USER_ID = re.compile(r"[!-~]+")
_DIGITS = b"0123456789"
_NUMBER_MASK = bytes(ord("1") if b in b"-+0123456789.eE" else ord(" ") for b in range(256))
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_AS_ARRAYS = bytes.maketrans(b"{}", b"[]")
_BRACKET_STEP = {ord("["): 1, ord("]"): -1}


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


def check_end_user_id(value: object, field: str = "user_id") -> str:
    """`value` when it is an end user's id safe in a log line, else `InvalidField`."""
    if not isinstance(value, str):
        raise InvalidField(field, f"{field} must be a string.")
    if not 1 <= len(value) <= MAX_END_USER_ID_CHARS:
        raise InvalidField(field, f"{field} must be 1 to {MAX_END_USER_ID_CHARS} characters long; "
                                  f"it has {len(value)}.")
    if not _END_USER_ID.fullmatch(value):
        raise InvalidField(field, f"{field} may hold only printable ASCII characters, without spaces.")
    return value


def check_strings(value: object, field: str = "") -> object:
    """`value` (parsed JSON) when every string in it, keys included, is valid Unicode, else
    `InvalidField` naming the first bad one by its path (`messages.0.content`; `body` for a bad
    top-level string)."""
    if isinstance(value, str):
        check_text(value, field or "body")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            check_strings(item, _join(field, str(i)))
    elif isinstance(value, dict):
        for key, item in value.items():
            # A key goes into the path only when it is fit to be read back in a message.
            path = _join(field, key if _is_name(key) else "<key>")
            check_text(key, path)
            check_strings(item, path)
    return value


def load_json(raw: bytes, field: str = "body") -> object:
    """The JSON value of `raw`, checked at the edge: `check_json_shape` first, so the parser never
    goes deep; no `NaN`/`Infinity` (JSON has none, Python's `json` accepts them) and no float
    that overflows to infinity (`1e400`); every string valid Unicode (`check_strings`). Raises
    `InvalidField`, or `ValueError` (`json.JSONDecodeError`, `UnicodeDecodeError`) for a body
    that is not JSON at all."""
    check_json_shape(raw, field=field)
    # As `json.loads(raw, ...)` decodes bytes, with a decoder built once (`json.loads` with hooks
    # builds one per call). `check_json_shape` has refused any encoding but UTF-8 (with or
    # without a BOM), so the surrogate bytes to look for below are UTF-8's.
    value = _DECODER.decode(raw.decode(json.detect_encoding(raw), "surrogatepass"))
    # A decoded string holds a surrogate only from a `\u` escape or from a surrogate's own bytes
    # (0xED, then 0xA0-0xBF, kept by "surrogatepass"): a body with neither needs no walk.
    if b"\\u" in raw or b"\xed" in raw:
        check_strings(value)
    return value


def _join(path: str, part: str) -> str:
    return f"{path}.{part}" if path else part


def _is_name(key: str) -> bool:
    return len(key) <= 64 and key.isprintable() and key.isascii()


def _no_constant(name: str) -> float:
    raise InvalidField("body", f"The body holds {name}, which is not a JSON number.")


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise InvalidField("body", f"The body holds the number {text[:20]}, too large for a double.")
    return number


# `load_json`'s decoder: no constants, no infinite floats.
_DECODER = json.JSONDecoder(parse_constant=_no_constant, parse_float=_finite_float)


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
    scan is linear and runs in C (`bytes.replace`, `split`, `translate` and a substring search;
    only a body with more than `max_depth` openings has its nesting summed, by
    `itertools.accumulate`), so it costs about what parsing costs: tens to a few hundred
    milliseconds for a hostile 4 MB body, never seconds.

    The scan reads UTF-8 (RFC 8259 §8.1), in which the bytes of `"`, `\\`, brackets and digits
    never occur inside another character; a body `json.loads` would decode as UTF-16 or UTF-32
    is refused.
    """
    if json.detect_encoding(raw) not in ("utf-8", "utf-8-sig"):
        raise InvalidField(field, f"The {field} must be JSON encoded as UTF-8.")
    # Strings hold no structure: drop them. Without its escaped backslashes and quotes (removed
    # in pairs from the left, as a JSON reader pairs them) every quote left opens or closes a
    # string, so the text outside strings is every other piece between quotes. An unterminated
    # string runs to the end, where json.loads refuses it before anything after it matters.
    unescaped = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    structure = b"".join(unescaped.split(b'"')[::2])
    # A number of more digits than allowed is a run of number characters longer than that; most
    # bodies have none, which one substring search over a mask of the body tells.
    if b"1" * (max_number_digits + 1) in structure.translate(_NUMBER_MASK):
        for run in _number_runs(max_number_digits).finditer(structure):
            digits = len(run.group()) - len(run.group().translate(None, _DIGITS))
            if digits > max_number_digits:
                raise InvalidField(field, f"The {field} holds a number of {digits} digits; at most "
                                          f"{max_number_digits} are allowed.")
    # Only the brackets, with objects' braces written as arrays' brackets.
    brackets = structure.translate(_AS_ARRAYS, _NOT_BRACKETS)
    # Fewer openings than the limit cannot nest past it: the common case ends here.
    if len(brackets) - brackets.count(b"]") > max_depth:
        # The deepest point is the largest running sum of +1 per opening and -1 per closing (a
        # long run of openings shows it at once). Past the first return to 0 the top-level value
        # is complete and json.loads stops, so the sum can only overstate how deep it would go.
        if b"[" * (max_depth + 1) in brackets or max(accumulate(
                map(_BRACKET_STEP.__getitem__, brackets))) > max_depth:
            raise InvalidField(field, f"The {field} nests JSON arrays and objects more than "
                                      f"{max_depth} levels deep.")
    return raw


@functools.cache
def _number_runs(max_digits: int) -> re.Pattern[bytes]:
    """Runs of number characters long enough to hold more than `max_digits` digits, matched only
    from the start of a run (the lookbehind), so that the search stays linear."""
    return re.compile(rb"(?<![-+0-9.eE])[-+0-9.eE]{%d,}" % (max_digits + 1))
