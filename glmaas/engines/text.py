"""Turning a stream of token bytes into a stream of text, and cutting it at stop strings.

Both are per-sequence state machines shared by every engine, so that a multi-byte character split
across tokens and a stop string split across deltas are handled the same way everywhere.
"""

from __future__ import annotations

import codecs


class IncrementalDecoder:
    """UTF-8 bytes of successive tokens in, complete characters out."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, piece: bytes) -> str:
        return self._decoder.decode(piece)

    def flush(self) -> str:
        return self._decoder.decode(b"", final=True)


class StopMatcher:
    """Holds back text that could be the start of a stop string.

    `push` returns the text safe to emit now and whether a stop string was completed; the text of
    the stop string itself and anything after it is never emitted (OpenAI and Zhipu behaviour).
    """

    def __init__(self, stops: tuple[str, ...]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._held = ""

    def push(self, text: str) -> tuple[str, bool]:
        if not self._stops:
            return text, False
        buf = self._held + text
        first = min((i for i in (buf.find(s) for s in self._stops) if i >= 0), default=-1)
        if first >= 0:
            self._held = ""
            return buf[:first], True
        keep = self._longest_partial_suffix(buf)
        self._held = buf[len(buf) - keep :]
        return buf[: len(buf) - keep], False

    def flush(self) -> str:
        held, self._held = self._held, ""
        return held

    def _longest_partial_suffix(self, buf: str) -> int:
        """Length of the longest suffix of `buf` that is a proper prefix of some stop string."""
        best = 0
        for stop in self._stops:
            for n in range(min(len(stop) - 1, len(buf)), best, -1):
                if buf.endswith(stop[:n]):
                    best = n
                    break
        return best
