"""Stop strings and UTF-8 pieces, for any split of the stream."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from glmaas.engines.text import IncrementalDecoder, StopMatcher


def _feed(matcher: StopMatcher, pieces: list[str]) -> tuple[str, bool]:
    out = []
    for p in pieces:
        text, hit = matcher.push(p)
        out.append(text)
        if hit:
            return "".join(out), True
    out.append(matcher.flush())
    return "".join(out), False


@given(st.text(max_size=40), st.lists(st.text(min_size=1, max_size=4), max_size=3), st.data())
def test_stop_matcher_equals_cutting_the_whole_text(text: str, stops: list[str], data) -> None:  # type: ignore[no-untyped-def]
    cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=6)))
    pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    got, hit = _feed(StopMatcher(tuple(stops)), pieces)
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    if hits:
        assert hit and got == text[: min(hits)]
    else:
        assert not hit and got == text


@given(st.text(max_size=30), st.data())
def test_decoder_never_splits_a_character(text: str, data) -> None:  # type: ignore[no-untyped-def]
    raw = text.encode()
    cuts = sorted(data.draw(st.lists(st.integers(0, len(raw)), max_size=8)))
    decoder = IncrementalDecoder()
    out = [decoder.push(raw[a:b]) for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True)]
    out.append(decoder.flush())
    assert "".join(out) == text
    assert all("\ufffd" not in piece for piece in out)
