from __future__ import annotations

import pytest

from align.transcripts import RowError, TranscriptError, parse_transcript, split_prompt_completion


def test_single_turn():
    msgs = parse_transcript("\n\nHuman: How do I bake bread?\n\nAssistant: Mix flour, water, yeast.")
    assert msgs == [{"role": "user", "content": "How do I bake bread?"},
                    {"role": "assistant", "content": "Mix flour, water, yeast."}]


def test_multi_turn_and_split():
    text = ("\n\nHuman: hi\n\nAssistant: hello!\n\nHuman: what is 2+2?\n\nAssistant:   4  \n")
    msgs = parse_transcript(text)
    assert [m["role"] for m in msgs] == ["user", "assistant", "user", "assistant"]
    assert msgs[-1]["content"] == "4"  # turns are whitespace-stripped
    prompt, completion = split_prompt_completion(msgs)
    assert prompt == msgs[:3]
    assert completion == [{"role": "assistant", "content": "4"}]


def test_human_inside_text_is_content():
    text = ("\n\nHuman: Write a script with lines like 'Human: hi' and\nAssistant: ok\n\nAssistant: "
            "Sure. Human: hello. Assistant:hi\nHuman: bye")
    msgs = parse_transcript(text)
    assert len(msgs) == 2
    assert msgs[0]["content"] == "Write a script with lines like 'Human: hi' and\nAssistant: ok"
    assert msgs[1]["content"] == "Sure. Human: hello. Assistant:hi\nHuman: bye"


def test_missing_space_after_colon_and_stripped_start():
    assert parse_transcript("\n\nHuman:hi\n\nAssistant:yo")[1]["content"] == "yo"
    # A re-export that stripped the leading blank line is still unambiguous.
    assert parse_transcript("Human: hi\n\nAssistant: yo") == parse_transcript("\n\nHuman: hi\n\nAssistant: yo")


@pytest.mark.parametrize("text,reason", [
    ("", "empty_transcript"),
    ("   \n\n ", "empty_transcript"),
    ("just some text", "no_human_turn"),
    ("\n\nAssistant: hello", "no_human_turn"),
    ("preamble\n\nHuman: hi\n\nAssistant: yo", "leading_text"),
    ("\n\nAssistant: hi\n\nHuman: yo\n\nAssistant: ok", "starts_with_assistant"),
    ("\n\nHuman: a\n\nHuman: b\n\nAssistant: c", "not_alternating"),
    ("\n\nHuman: a\n\nAssistant: b\n\nAssistant: c", "not_alternating"),
    ("\n\nHuman: \n\nAssistant: c", "empty_turn"),
    ("\n\nHuman: a\n\nAssistant:   \n\nHuman: b\n\nAssistant: c", "empty_turn"),
    ("\n\nHuman: a\n\nAssistant: ", "empty_completion"),
    ("\n\nHuman: a", "ends_with_user"),
    ("\n\nHuman: a\n\nAssistant: b\n\nHuman: c", "ends_with_user"),
])
def test_malformed(text, reason):
    with pytest.raises(TranscriptError) as info:
        parse_transcript(text)
    assert info.value.reason == reason
    assert isinstance(info.value, RowError) and isinstance(info.value, ValueError)
    assert info.value.message  # a human message besides the code


@pytest.mark.parametrize("value", [None, 3, b"\n\nHuman: a\n\nAssistant: b", ["x"], {"chosen": "x"}])
def test_not_a_string(value):
    with pytest.raises(TranscriptError) as info:
        parse_transcript(value)
    assert info.value.reason == "not_a_string"


def test_split_errors():
    with pytest.raises(TranscriptError) as info:
        split_prompt_completion([])
    assert info.value.reason == "no_human_turn"
    with pytest.raises(TranscriptError) as info:
        split_prompt_completion([{"role": "user", "content": "a"}])
    assert info.value.reason == "ends_with_user"
    with pytest.raises(TranscriptError) as info:
        split_prompt_completion([{"role": "assistant", "content": "a"}])
    assert info.value.reason == "no_human_turn"
