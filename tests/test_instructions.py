from __future__ import annotations

import pytest

from align.instructions import InstructionError, instruction_to_messages
from align.transcripts import RowError


def test_instruction_only():
    msgs = instruction_to_messages({"instruction": " Say hi. ", "input": "", "output": "Hi!"})
    assert msgs == [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi!"}]


def test_input_appended_after_blank_line():
    msgs = instruction_to_messages({"instruction": "Translate to French.", "input": "cat", "output": "chat"})
    assert msgs[0]["content"] == "Translate to French.\n\ncat"


def test_input_optional_and_none():
    assert instruction_to_messages({"instruction": "a", "output": "b"})[0]["content"] == "a"
    assert instruction_to_messages({"instruction": "a", "input": None, "output": "b"})[0]["content"] == "a"


def test_lima_history_comes_first():
    row = {"instruction": "And then?", "input": "", "output": "Then it ends.",
           "history": [["Tell me a story.", "Once upon a time."], ["More?", "A dragon came."]]}
    msgs = instruction_to_messages(row)
    assert [m["role"] for m in msgs] == ["user", "assistant", "user", "assistant", "user", "assistant"]
    assert msgs[0]["content"] == "Tell me a story."
    assert msgs[3]["content"] == "A dragon came."
    assert msgs[4:] == [{"role": "user", "content": "And then?"}, {"role": "assistant", "content": "Then it ends."}]


@pytest.mark.parametrize("row,reason", [
    (["instruction", "output"], "not_an_object"),
    ("text", "not_an_object"),
    ({"output": "b"}, "missing_field"),
    ({"instruction": "a"}, "missing_field"),
    ({"instruction": None, "output": "b"}, "missing_field"),
    ({"instruction": 1, "output": "b"}, "not_a_string"),
    ({"instruction": "a", "output": ["b"]}, "not_a_string"),
    ({"instruction": "a", "input": 3, "output": "b"}, "not_a_string"),
    ({"instruction": "  ", "output": "b"}, "empty_instruction"),
    ({"instruction": "a", "output": ""}, "empty_completion"),
    ({"instruction": "a", "output": "b", "history": "x"}, "bad_history"),
    ({"instruction": "a", "output": "b", "history": [["only one"]]}, "bad_history"),
    ({"instruction": "a", "output": "b", "history": [["q", ""]]}, "bad_history"),
    ({"instruction": "a", "output": "b", "history": [["q", 5]]}, "bad_history"),
])
def test_bad_rows(row, reason):
    with pytest.raises(InstructionError) as info:
        instruction_to_messages(row)
    assert info.value.reason == reason
    assert isinstance(info.value, RowError)
