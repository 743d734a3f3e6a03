"""Request bodies of the OpenAI-style API (the subset this service implements), validated by pydantic."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, WithJsonSchema, field_validator


class ChatMessage(BaseModel):
    # Unknown keys (name, tool_call_id...) are ignored like OpenAI-compatible servers do; wrong types are not
    # coerced (strict), so "max_tokens": "10" is a 400, not a silent cast.
    model_config = ConfigDict(extra="ignore", strict=True)

    role: Literal["system", "user", "assistant"]
    content: str

    @field_validator("content")
    @classmethod
    def _encodable(cls, v: str) -> str:
        # JSON may carry a lone UTF-16 surrogate ("\ud800"): valid JSON, but no tokenizer can encode it.
        try:
            v.encode("utf-8")
        except UnicodeEncodeError as err:
            raise ValueError(f"contains an unpaired UTF-16 surrogate at character {err.start}; send valid "
                             f"Unicode text") from None
        return v


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    include_usage: bool = False


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True, protected_namespaces=())

    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="0 (anything below 0.001): greedy, as in the safety evals")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    # The schema states what _stops enforces, so the OpenAPI document (serve/openapi.py) has the same limits.
    stop: Annotated[str | list[str] | None, WithJsonSchema({"anyOf": [
        {"type": "string", "minLength": 1},
        {"type": "array", "items": {"type": "string", "minLength": 1}, "maxItems": 4},
        {"type": "null"}]})] = None
    stream: bool = Field(False, description="server-sent events, OpenAI chunk format, ending with data: [DONE]")
    stream_options: StreamOptions | None = None
    n: Literal[1] = 1

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: str | list[str] | None) -> list[str] | None:
        stops = [v] if isinstance(v, str) else v
        if stops is not None and (len(stops) > 4 or any(not s for s in stops)):
            raise ValueError("stop must be a non-empty string or a list of at most 4 non-empty strings")
        return stops or None


_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none", "literal"}


def first_error(err: ValidationError) -> tuple[str, str]:
    """(field path like ``messages[0].role``, message) of the first problem; never echoes the input value."""
    e = err.errors(include_input=False, include_url=False)[0]
    path = ""
    for part in e["loc"]:
        if isinstance(part, str) and (part in _TYPE_TAGS or "[" in part):
            continue  # the union member pydantic tried ("stop.str"), not a field
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "body", e["msg"]
