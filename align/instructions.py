"""Instruction rows (Alpaca, safety-tuned-llamas, LIMA) -> chat messages.

A row is ``{"instruction", "input"?, "output", "history"?}``. A non-empty ``input`` is appended to the
instruction after a blank line (the Alpaca convention). LIMA's ``history`` is ``[[user, assistant], ...]``:
those turns come first, then the instruction and its output as the final exchange.

Bad rows raise :class:`InstructionError` (a :class:`~align.transcripts.RowError`) with a reason code:
not_an_object, missing_field, not_a_string, empty_instruction, empty_completion, bad_history.
"""

from __future__ import annotations

from typing import Any

from align.transcripts import Message, RowError


class InstructionError(RowError):
    """An instruction row that cannot become a conversation."""


def _text(row: dict[str, Any], key: str, *, required: bool) -> str:
    if key not in row or row[key] is None:
        if required:
            raise InstructionError("missing_field", f"row has no {key!r} field")
        return ""
    value = row[key]
    if not isinstance(value, str):
        raise InstructionError("not_a_string", f"{key!r} must be a string, got {type(value).__name__}")
    return value.strip()


def _history(row: dict[str, Any]) -> list[Message]:
    history = row.get("history") or []
    if not isinstance(history, list):
        raise InstructionError("bad_history", f"'history' must be a list of [user, assistant] pairs, "
                                              f"got {type(history).__name__}")
    messages: list[Message] = []
    for i, pair in enumerate(history):
        if (not isinstance(pair, (list, tuple)) or len(pair) != 2
                or not all(isinstance(t, str) and t.strip() for t in pair)):
            raise InstructionError("bad_history", f"history[{i}] is not a pair of non-empty strings")
        messages.append({"role": "user", "content": pair[0].strip()})
        messages.append({"role": "assistant", "content": pair[1].strip()})
    return messages


def _conversation(row: dict[str, Any]) -> list[Message]:
    """LIMA as the hub serves it (GAIR/lima train.jsonl): ``conversations`` alternates user and assistant turns,
    starting with the user; the mirror's copy (LLaMA-Factory's lima.json) has instruction/output/history instead."""
    turns = row["conversations"]
    if not isinstance(turns, list) or not all(isinstance(t, str) for t in turns):
        raise InstructionError("not_a_string", "'conversations' must be a list of strings")
    if len(turns) < 2 or len(turns) % 2:
        raise InstructionError("bad_history", f"'conversations' needs user/assistant pairs, got {len(turns)} turns")
    if not all(t.strip() for t in turns):
        raise InstructionError("empty_completion", "a turn of 'conversations' is empty")
    return [{"role": "user" if i % 2 == 0 else "assistant", "content": t.strip()} for i, t in enumerate(turns)]


def instruction_to_messages(row: Any) -> list[Message]:
    """History turns, then the user turn (instruction [+ blank line + input]), then the assistant output.
    A row with ``conversations`` and no ``instruction`` (LIMA on the hub) gives its turns in order."""
    if not isinstance(row, dict):
        raise InstructionError("not_an_object", f"row must be an object, got {type(row).__name__}")
    if "conversations" in row and "instruction" not in row:
        return _conversation(row)
    instruction = _text(row, "instruction", required=True)
    extra = _text(row, "input", required=False)  # optional: safety data and LIMA have it, others may not
    output = _text(row, "output", required=True)
    if not instruction:
        raise InstructionError("empty_instruction", "'instruction' is empty")
    if not output:
        raise InstructionError("empty_completion", "'output' is empty")
    user = f"{instruction}\n\n{extra}" if extra else instruction
    return [*_history(row), {"role": "user", "content": user}, {"role": "assistant", "content": output}]
