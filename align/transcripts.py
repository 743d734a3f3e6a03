"""Anthropic HH / HH-Golden transcripts -> chat messages.

The format is one string: ``"\\n\\nHuman: ...\\n\\nAssistant: ...\\n\\nHuman: ..."``. Only ``"\\n\\nHuman:"`` and
``"\\n\\nAssistant:"`` (space after the colon optional) start a turn: "Human:" elsewhere in a turn's text is
content, not a marker. A transcript that starts with a bare ``"Human:"`` (the leading blank line stripped,
as some re-exports do) is accepted too, because that is unambiguous.

Malformed transcripts raise :class:`TranscriptError` with a short ``reason`` code, so the mixture builder can
count skipped rows per reason instead of crashing or silently dropping them.
"""

from __future__ import annotations

import re
from typing import Any, TypedDict


class Message(TypedDict):
    role: str  # "user" | "assistant"
    content: str


class RowError(ValueError):
    """A row that cannot become a training example. ``reason`` is a short code used as a counter key."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


class TranscriptError(RowError):
    """An HH transcript that does not parse (see the module docstring for the reason codes)."""


# "\n\nHuman:" / "\n\nAssistant:" are the only markers; the space after the colon is optional.
_MARKER = re.compile(r"\n\n(Human|Assistant):[ ]?")
_ROLES = {"Human": "user", "Assistant": "assistant"}


def parse_transcript(text: Any) -> list[Message]:
    """Turns of an HH transcript, whitespace-stripped, strictly alternating user/assistant, ending with the
    assistant. Reasons: not_a_string, empty_transcript, leading_text, no_human_turn, starts_with_assistant,
    not_alternating, empty_turn, empty_completion (the final assistant turn is empty), ends_with_user."""
    if not isinstance(text, str):
        raise TranscriptError("not_a_string", f"transcript must be a string, got {type(text).__name__}")
    if not text.strip():
        raise TranscriptError("empty_transcript", "transcript is empty")
    # Re-exports that .strip() the text lose the leading "\n\n" of the first marker: restore it.
    stripped = text.lstrip()
    if stripped.startswith(("Human:", "Assistant:")):
        text = "\n\n" + stripped
    matches = list(_MARKER.finditer(text))
    if not any(m.group(1) == "Human" for m in matches):
        raise TranscriptError("no_human_turn", "no '\\n\\nHuman:' turn marker in the transcript")
    lead = text[: matches[0].start()]
    if lead.strip():
        raise TranscriptError("leading_text", f"text before the first turn marker: {lead.strip()[:60]!r}")
    if matches[0].group(1) != "Human":
        raise TranscriptError("starts_with_assistant", "the first turn is the assistant's, not the human's")

    messages: list[Message] = []
    for i, m in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        role = _ROLES[m.group(1)]
        if messages and messages[-1]["role"] == role:
            raise TranscriptError("not_alternating", f"two {m.group(1)} turns in a row (turn {i + 1})")
        messages.append({"role": role, "content": text[m.end():end].strip()})

    if messages[-1]["role"] != "assistant":
        raise TranscriptError("ends_with_user", "the transcript ends with a Human turn, not an Assistant reply")
    for i, msg in enumerate(messages[:-1]):
        if not msg["content"]:
            raise TranscriptError("empty_turn", f"turn {i + 1} ({msg['role']}) is empty")
    if not messages[-1]["content"]:
        raise TranscriptError("empty_completion", "the final Assistant turn is empty")
    return messages


def split_prompt_completion(messages: list[Message]) -> tuple[list[Message], list[Message]]:
    """(everything before the final assistant turn, [final assistant message]) -- TRL's conversational
    prompt/completion shape, so loss is computed on the final reply only."""
    if not messages:
        raise TranscriptError("no_human_turn", "no messages")
    if messages[-1]["role"] != "assistant":
        raise TranscriptError("ends_with_user", "the last message is not the assistant's")
    if not any(m["role"] == "user" for m in messages[:-1]):
        raise TranscriptError("no_human_turn", "no user message before the final assistant reply")
    return list(messages[:-1]), [messages[-1]]


def split_preference_pair(row: Any) -> tuple[list[Message], Message, Message]:
    """An HH row's chosen and rejected transcripts -> (shared dialogue prefix, chosen reply, rejected reply).

    Both the DPO mixture and the hh_preference suite read pairs this way; each decides for itself which
    near-identical replies carry no preference signal.
    """
    if not isinstance(row, dict):
        raise TranscriptError("not_an_object", "a preference row must be an object")
    sides = {}
    for side in ("chosen", "rejected"):
        if side not in row:
            raise TranscriptError("missing_field", f"row has no {side!r} transcript")
        sides[side] = split_prompt_completion(parse_transcript(row[side]))
    (prompt, chosen), (prompt_r, rejected) = sides["chosen"], sides["rejected"]
    if prompt != prompt_r:
        raise TranscriptError("pair_prompt_mismatch", "chosen and rejected transcripts differ before the last reply")
    return prompt, chosen[0], rejected[0]
