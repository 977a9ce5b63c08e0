"""The edge checks: Unicode text, request ids, and the JSON pre-scan, against generated input."""

from __future__ import annotations

import json
import string
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from glmaas.platform.validation import (
    MAX_END_USER_ID_CHARS,
    MAX_REQUEST_ID_CHARS,
    InvalidField,
    check_end_user_id,
    check_json_shape,
    check_request_id,
    check_strings,
    check_text,
    load_json,
)

SURROGATES = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
# Every code point, surrogates included (Hypothesis leaves them out by default).
ANY_CHAR = st.characters(codec=None, exclude_categories=())
ID_CHARS = string.ascii_letters + string.digits + "._:-"


# -- check_text ------------------------------------------------------------------------------------

@given(st.text())
def test_valid_unicode_passes_unchanged(text: str) -> None:
    assert check_text(text, "messages[0].content") is text


@given(st.text(), SURROGATES, st.text())
def test_any_surrogate_is_refused_naming_the_field(before: str, surrogate: str, after: str) -> None:
    with pytest.raises(InvalidField) as info:
        check_text(before + surrogate + after, "messages[0].content")
    assert info.value.field == "messages[0].content"
    assert "messages[0].content" in str(info.value) and f"U+{ord(surrogate):04X}" in str(info.value)


@pytest.mark.parametrize("escaped", [r'"\ud800"', r'"a\udfffb"', r'"\udc00\ud800"', r'"\ude00\ud83d"'])
def test_lone_and_reversed_surrogates_from_json_are_refused(escaped: str) -> None:
    with pytest.raises(InvalidField):
        check_text(json.loads(escaped), "content")


def test_a_surrogate_pair_in_json_is_one_character_and_passes() -> None:
    assert check_text(json.loads(r'"\ud83d\ude00"'), "content") == "\N{GRINNING FACE}"


# -- check_request_id ------------------------------------------------------------------------------

@given(st.text(ID_CHARS, min_size=1, max_size=MAX_REQUEST_ID_CHARS))
def test_safe_ids_pass(request_id: str) -> None:
    assert check_request_id(request_id) == request_id


@given(st.text(ANY_CHAR, max_size=300) | st.integers() | st.none() | st.lists(st.text()))
@example("a\r\nSet-Cookie: x=1")
@example("id\x00")
@example("中文")
@example("")
@example("x" * (MAX_REQUEST_ID_CHARS + 1))
def test_every_other_value_is_refused_and_nothing_else_raised(value: object) -> None:
    safe = (isinstance(value, str) and 1 <= len(value) <= MAX_REQUEST_ID_CHARS
            and all(c in ID_CHARS for c in value))
    if safe:
        assert check_request_id(value) == value
    else:
        with pytest.raises(InvalidField) as info:
            check_request_id(value)
        assert info.value.field == "request_id" and "request_id" in str(info.value)


# -- check_json_shape ------------------------------------------------------------------------------

# Keys and strings full of what the scanner must skip inside strings: quotes, backslashes, brackets.
TRICKY_TEXT = st.text(st.sampled_from('"\\[]{}0123456789eE.-:, aé中') | st.characters(), max_size=12)
SCALARS = (st.none() | st.booleans() | st.integers(-(10**150), 10**150)
           | st.floats(allow_nan=False, allow_infinity=False) | TRICKY_TEXT)
JSON_VALUES = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TRICKY_TEXT, inner, max_size=3),
    max_leaves=30)


def depth_of(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max(map(depth_of, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(depth_of, value.values()), default=0)
    return 0


def digits_of(value: Any) -> int:
    """The most digits in one number of `value`, as `json.dumps` writes it."""
    if isinstance(value, list):
        return max(map(digits_of, value), default=0)
    if isinstance(value, dict):
        return max(map(digits_of, value.values()), default=0)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return sum(c.isdigit() for c in json.dumps(value))
    return 0


@settings(max_examples=300)
@given(JSON_VALUES, st.integers(0, 6), st.integers(1, 60), st.booleans())
def test_valid_json_is_refused_exactly_when_too_deep_or_its_numbers_too_long(
        value: Any, max_depth: int, max_digits: int, ascii_only: bool) -> None:
    raw = json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
    fits = depth_of(value) <= max_depth and digits_of(value) <= max_digits
    if fits:
        assert check_json_shape(raw, max_depth=max_depth, max_number_digits=max_digits) is raw
    else:
        with pytest.raises(InvalidField) as info:
            check_json_shape(raw, max_depth=max_depth, max_number_digits=max_digits)
        assert info.value.field == "body"


HOSTILE_BYTES = (st.binary(max_size=400)
                 | st.text(st.sampled_from('[]{}"\\,:0123456789eE.-+ tnul'), max_size=400).map(str.encode))


@settings(max_examples=400)
@given(HOSTILE_BYTES, st.integers(0, 8), st.integers(1, 20))
def test_what_the_scan_lets_through_json_parses_shallow_or_refuses_cleanly(
        raw: bytes, max_depth: int, max_digits: int) -> None:
    try:
        check_json_shape(raw, max_depth=max_depth, max_number_digits=max_digits)
    except InvalidField:
        return
    try:
        value = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return  # the ordinary 400 for a body that is not JSON
    assert depth_of(value) <= max_depth
    assert int_digits_of(value) <= max_digits


def int_digits_of(value: Any) -> int:
    """The most digits in one integer of `value` (a float's digits change when re-written)."""
    if isinstance(value, list):
        return max(map(int_digits_of, value), default=0)
    if isinstance(value, dict):
        return max(map(int_digits_of, value.values()), default=0)
    return len(str(abs(value))) if isinstance(value, int) and not isinstance(value, bool) else 0


@pytest.mark.parametrize("raw", [
    b"[" * 100_000,
    b'{"a":' * 50_000,
    b'{"messages": [' + b"[" * 5_000 + b"]" * 5_000 + b"]}",
    b'[1, "\\"", ' + b"[" * 2_000,  # an escaped quote must not hide what follows
])
def test_deep_nesting_is_refused_before_the_parser_recurses(raw: bytes) -> None:
    with pytest.raises(InvalidField, match="levels deep"):
        check_json_shape(raw)


def test_nesting_inside_a_string_is_not_structure() -> None:
    raw = json.dumps({"content": "[" * 10_000 + "\\\"{" * 1_000}).encode()
    assert check_json_shape(raw) is raw


@pytest.mark.parametrize("number", [b"1" * 5_000, b"-" + b"9" * 200, b"0." + b"3" * 500, b"1e" + b"9" * 400])
def test_long_numbers_are_refused_even_in_an_ignored_field(number: bytes) -> None:
    with pytest.raises(InvalidField, match="digits"):
        check_json_shape(b'{"model": "m", "ignored": ' + number + b"}")


def test_utf16_json_is_refused() -> None:
    with pytest.raises(InvalidField, match="UTF-8"):
        check_json_shape('{"a": 1}'.encode("utf-16"))


def test_an_unterminated_string_ends_the_scan() -> None:
    raw = b'{"a": "never closed \\" [[[['
    assert check_json_shape(raw, max_depth=1) is raw


# -- check_end_user_id -----------------------------------------------------------------------------

@given(st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=MAX_END_USER_ID_CHARS))
def test_printable_ascii_user_ids_pass(user_id: str) -> None:
    assert check_end_user_id(user_id, "user") == user_id


@pytest.mark.parametrize("value", ["a b", "u\nFAKE", "\x00", "中文", "", "x" * (MAX_END_USER_ID_CHARS + 1), 7, None])
def test_other_user_ids_are_refused(value: object) -> None:
    with pytest.raises(InvalidField) as info:
        check_end_user_id(value, "user")
    assert info.value.field == "user"


# -- check_strings and load_json -------------------------------------------------------------------

def test_check_strings_names_the_path_of_the_first_bad_string() -> None:
    value = {"messages": [{"role": "user", "content": "ok"}, {"role": "user", "content": "\ud800"}]}
    with pytest.raises(InvalidField) as info:
        check_strings(value)
    assert info.value.field == "messages.1.content"


def test_a_bad_key_is_named_by_position_not_quoted() -> None:
    with pytest.raises(InvalidField) as info:
        check_strings({"tools": [{"\udc00": 1}]})
    assert info.value.field == "tools.0.<key>"


@given(JSON_VALUES, st.booleans())
def test_load_json_reads_back_what_valid_json_holds(value: Any, ascii_only: bool) -> None:
    # Not ASCII-only: a surrogate comes as its own bytes rather than as a `\u` escape.
    raw = json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
    try:
        check_strings(value)
    except InvalidField:
        with pytest.raises(InvalidField):
            load_json(raw)
        return
    if depth_of(value) <= 64 and digits_of(value) <= 100:
        assert load_json(raw) == value


@pytest.mark.parametrize("raw", [b'{"content": "a\xed\xa0\x80b"}', b'{"a\xed\xbf\xbf": 1}', b'["\\ud800"]'])
def test_load_json_refuses_a_surrogate_as_bytes_or_escaped(raw: bytes) -> None:
    with pytest.raises(InvalidField):
        load_json(raw)


def test_load_json_passes_text_whose_bytes_start_with_0xed() -> None:
    # U+D55C (Hangul) is 0xED 0x95 0x9C in UTF-8: the same lead byte as a surrogate's.
    assert load_json('{"content": "\ud55c"}'.encode()) == {"content": "\ud55c"}


@pytest.mark.parametrize("raw", [b"NaN", b"[Infinity]", b'{"a": -Infinity}', b"1e400", b"[-1e309]"])
def test_load_json_refuses_what_is_not_a_finite_json_number(raw: bytes) -> None:
    with pytest.raises(InvalidField) as info:
        load_json(raw)
    assert info.value.field == "body"
