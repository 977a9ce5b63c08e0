"""Reasoning split from content as thinking models write it, streamed in any pieces, with the
tokens spent on it counted exactly."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from glmaas.engines.chat_output import ChatOutputParser
from glmaas.engines.reasoning import ReasoningSplitter, prompt_opens_reasoning
from glmaas.engines.tool_calls import FunctionSpec
from glmaas.engines.tool_formats import Glm45Parser

# (output, opened by the prompt, reasoning, content)
CASES = [
    # GLM-4.5: the model opens <think> itself, a newline separates the answer.
    ("<think>The user greets me.</think>\nHello! 你好！", False, "The user greets me.", "Hello! 你好！"),
    ("\n<think>Short.</think>Answer.", False, "Short.", "Answer."),
    # GLM-4.7 / GLM-Z1: the generation prompt already opened <think>.
    ("Let me think about 2+2.</think>\n4", True, "Let me think about 2+2.", "4"),
    # Thinking off (the template closed an empty block in the prompt): all content.
    ("Hello there.", False, "", "Hello there."),
    # A think tag later in the answer is not reasoning.
    ("Use <think> tags like this.", False, "", "Use <think> tags like this."),
    # Cut off while reasoning: everything is reasoning.
    ("<think>Still going and go", False, "Still going and go", ""),
]


def _run(text: str, opened: bool, cuts: list[int]) -> tuple[str, str, ReasoningSplitter]:
    splitter = ReasoningSplitter(opened=opened)
    reasoning = content = ""
    bounds = [0, *sorted(set(c % (len(text) + 1) for c in cuts)), len(text)]
    for a, b in zip(bounds, bounds[1:], strict=False):
        piece = splitter.push(text[a:b], tokens=b - a)
        reasoning, content = reasoning + piece.reasoning, content + piece.content
    tail = splitter.finish()
    return reasoning + tail.reasoning, content + tail.content, splitter


@pytest.mark.parametrize("text, opened, reasoning, content", CASES)
def test_split_one_character_at_a_time(text: str, opened: bool, reasoning: str, content: str) -> None:
    got_reasoning, got_content, _ = _run(text, opened, list(range(len(text))))
    assert (got_reasoning, got_content) == (reasoning, content)


@settings(max_examples=30, deadline=None)
@given(case=st.sampled_from(CASES), cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=8))
def test_split_in_any_pieces(case: tuple, cuts: list[int]) -> None:
    text, opened, reasoning, content = case
    assert _run(text, opened, cuts)[:2] == (reasoning, content)


def test_reasoning_tokens_are_those_up_to_the_closing_marker() -> None:
    """One character = one token here: the count is the length of `<think>…</think>`."""
    text = "<think>Weigh it.</think>\nDone."
    *_, splitter = _run(text, False, list(range(len(text))))
    assert splitter.reasoning_tokens == len("<think>Weigh it.</think>")


def test_no_reasoning_tokens_without_reasoning() -> None:
    *_, splitter = _run("Just an answer.", False, [3, 7])
    assert splitter.reasoning_tokens == 0


def test_prompt_that_opens_reasoning() -> None:
    assert prompt_opens_reasoning("<|user|>\nhi<|assistant|><think>")
    assert not prompt_opens_reasoning("<|user|>\nhi<|assistant|>\n<think></think>")


def test_reasoning_then_tool_call() -> None:
    """GLM-4.5 interleaves: reasoning first, then the call, each in its own field."""
    parser = ChatOutputParser(reasoning=ReasoningSplitter(),
                              tools=Glm45Parser((FunctionSpec("get_weather"),)))
    text = ("<think>Need the weather.</think>\n<tool_call>get_weather\n<arg_key>city</arg_key>\n"
            "<arg_value>Paris</arg_value>\n</tool_call>")
    reasoning, content, calls = "", "", []
    for ch in text:
        piece = parser.push(ch, 1)
        reasoning, content, calls = reasoning + piece.reasoning, content + piece.content, calls + piece.tool_calls
    tail = parser.finish()
    assert (reasoning + tail.reasoning, content + tail.content) == ("Need the weather.", "")
    assert [(c.name, c.arguments) for c in calls + tail.tool_calls] == [("get_weather", '{"city": "Paris"}')]
    assert parser.reasoning_tokens == len("<think>Need the weather.</think>")
