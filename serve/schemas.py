"""Request bodies of the OpenAI chat completions API, validated by pydantic.

Every field of OpenAI's ``POST /v1/chat/completions`` is declared here and is either honoured or refused with a
400 that names it (``param``) and says why; nothing is silently ignored. Unknown fields are refused too, as
OpenAI does ("unrecognized request argument"). docs/SERVICE.md lists each field and what this service does with it.

A refused field still accepts the value that asks for nothing (``tools: []``, ``tool_choice: "none"``,
``modalities: ["text"]``...), because clients and agent frameworks send those by default.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, WithJsonSchema, field_validator,
                      model_validator)

MAX_LOGIT_BIAS = 100
MAX_TOP_LOGPROBS = 20
_SCHEMA_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class Problem(ValueError):
    """A 400 with its own field (``sub``, under the place pydantic reports it) and OpenAI error ``code``."""

    code = "invalid_value"

    def __init__(self, message: str, sub: str | None = None) -> None:
        super().__init__(message)
        self.message, self.sub = message, sub


class RequestRefused(Problem):
    """A field this service does not implement, with a value that asks for it."""

    code = "unsupported_parameter"


@dataclass(frozen=True)
class Refused:
    """A request field this service refuses unless it holds one of ``allowed`` (values that ask for nothing)."""

    reason: str
    allowed: tuple[Any, ...] = (None,)

    def check(self, name: str, value: Any) -> Any:
        if any(value == ok and type(value) is type(ok) for ok in self.allowed):
            return value
        raise RequestRefused(f"{name} is not supported: {self.reason}")


def _show(value: Any) -> str:
    return "null" if value is None else repr(value).replace("'", '"')


NO_TOOLS = "this service serves a plain chat model and offers no tool or function calling"
REFUSED: dict[str, Refused] = {
    "tools": Refused(NO_TOOLS, (None, [])),
    "tool_choice": Refused(NO_TOOLS, (None, "none")),
    "parallel_tool_calls": Refused(NO_TOOLS),
    "functions": Refused(NO_TOOLS, (None, [])),
    "function_call": Refused(NO_TOOLS, (None, "none")),
    "audio": Refused("the served model produces text only"),
    "modalities": Refused("the served model produces text only", (None, ["text"])),
    "prediction": Refused("predicted outputs are not implemented"),
    "web_search_options": Refused("this service has no web search"),
    "store": Refused("completions are not stored for distillation or evals; the service's completion log is "
                     "configured by service.feedback", (None, False)),
    "metadata": Refused("metadata is kept only with stored completions (store), which this service does not "
                        "offer", (None, {})),
    "reasoning_effort": Refused("the served model does not reason before answering", (None, "none")),
    "verbosity": Refused("the served model cannot be steered by a verbosity setting", (None, "medium")),
    "service_tier": Refused("this service has one processing tier", (None, "auto", "default")),
    "moderation": Refused("moderation is set by the service (service.moderation) for every reply and cannot be "
                          "changed per request"),
}


class _Strict(BaseModel):
    # Unknown keys are refused (OpenAI: "unrecognized request argument"); wrong types are not coerced (strict),
    # so "max_tokens": "10" is a 400, not a silent cast.
    model_config = ConfigDict(extra="forbid", strict=True)


def _encodable(v: str) -> str:
    # JSON may carry a lone UTF-16 surrogate ("\ud800"): valid JSON, but no tokenizer can encode it.
    try:
        v.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError(f"contains an unpaired UTF-16 surrogate at character {err.start}; send valid "
                         f"Unicode text") from None
    return v


class TextPart(_Strict):
    type: Literal["text", "refusal"] = Field(description="text; an assistant's earlier refusal is read as text")
    text: str | None = None
    refusal: str | None = None
    prompt_cache_breakpoint: dict[str, Any] | None = Field(None, description="accepted; this service keeps no "
                                                                              "prompt cache (no effect)")

    @model_validator(mode="after")
    def _has_text(self) -> "TextPart":
        key = "text" if self.type == "text" else "refusal"
        value = self.text if self.type == "text" else self.refusal
        if not isinstance(value, str):
            raise ValueError(f"a {self.type!r} content part needs a string {key!r}")
        _encodable(value)
        return self

    @property
    def value(self) -> str:
        return (self.text if self.type == "text" else self.refusal) or ""


NON_TEXT_PARTS = {"image_url": "images", "input_audio": "audio", "file": "files", "input_image": "images",
                  "input_file": "files"}


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"] = Field(
        description="developer is read as system; tool and function are refused (no tool calling)")
    content: str | list[TextPart] | None = Field(
        description="a string, or a list of text parts (joined with newlines, as vLLM does)")
    name: Annotated[Any, WithJsonSchema({"enum": [None], "description": "Not supported: the chat template has no "
                                                                        "place for a participant name"})] = None
    refusal: str | None = Field(None, description="an assistant's earlier refusal (read as its content)")
    tool_calls: Annotated[Any, WithJsonSchema({"enum": [None, []], "description": f"Not supported: {NO_TOOLS}"})] = None
    tool_call_id: Annotated[Any, WithJsonSchema({"enum": [None], "description": f"Not supported: {NO_TOOLS}"})] = None
    function_call: Annotated[Any, WithJsonSchema({"enum": [None], "description": f"Not supported: {NO_TOOLS}"})] = None
    audio: Annotated[Any, WithJsonSchema({"enum": [None], "description": "Not supported: text only"})] = None

    @model_validator(mode="before")
    @classmethod
    def _refuse_early(cls, data: Any) -> Any:
        # Clear reasons for tool turns and image/audio/file parts, before pydantic's generic type errors.
        if isinstance(data, dict) and data.get("role") in ("tool", "function"):
            raise RequestRefused(f"role {data['role']!r} is not supported: {NO_TOOLS}", sub="role")
        if isinstance(data, dict) and isinstance(data.get("content"), list):
            for i, part in enumerate(data["content"]):
                kind = part.get("type") if isinstance(part, dict) else None
                if isinstance(kind, str) and kind in NON_TEXT_PARTS:
                    raise RequestRefused(f"{kind!r} content parts are not supported: the served model reads text "
                                         f"only (no {NON_TEXT_PARTS[kind]})", sub=f"content[{i}].type")
        return data

    @field_validator("name", "tool_call_id", "function_call", "audio")
    @classmethod
    def _none_only(cls, v: Any, info: ValidationInfo) -> Any:
        if v is not None:
            why = {"name": "the model's chat template has no place for participant names",
                   "audio": "the served model reads and writes text only"}.get(info.field_name, NO_TOOLS)
            raise RequestRefused(f"{info.field_name} is not supported: {why}")
        return v

    @field_validator("tool_calls")
    @classmethod
    def _no_tool_calls(cls, v: Any) -> Any:
        if v not in (None, []):
            raise RequestRefused(f"tool_calls is not supported: {NO_TOOLS}")
        return v

    @field_validator("content")
    @classmethod
    def _content(cls, v: Any) -> Any:
        return _encodable(v) if isinstance(v, str) else v

    @field_validator("refusal")
    @classmethod
    def _refusal(cls, v: str | None) -> str | None:
        return _encodable(v) if v is not None else v

    @model_validator(mode="after")
    def _role_rules(self) -> "ChatMessage":
        if self.content is None and not (self.role == "assistant" and self.refusal is not None):
            raise Problem("a message needs content (null is allowed only for an assistant refusal)", sub="content")
        return self

    def template_message(self) -> dict[str, str]:
        """What the chat template sees: developer read as system, text parts joined, a refusal as content."""
        if isinstance(self.content, list):
            text = "\n".join(p.value for p in self.content)
        else:
            text = self.content if self.content is not None else (self.refusal or "")
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


class StreamOptions(_Strict):
    include_usage: bool | None = Field(None, description="a last chunk with usage, choices empty")
    include_obfuscation: bool | None = Field(None, description="random padding in each delta chunk (default true, "
                                                               "as OpenAI)")


class JsonSchemaFormat(_Strict):
    name: str = Field(description="^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema", description="JSON Schema the reply is held to")
    strict: bool | None = Field(None, description="the reply is held to the schema either way (constrained "
                                                  "decoding)")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _SCHEMA_NAME.match(v):
            raise ValueError("must be 1-64 characters of a-z, A-Z, 0-9, _ and -")
        return v


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _needs_schema(self) -> "ResponseFormat":
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError("json_schema is required with type 'json_schema' and allowed only with it")
        return self


def _refused(name: str) -> Any:
    r = REFUSED[name]
    schema = {"description": f"Not supported: {r.reason}. Accepted only as: "
                             f"{', '.join(_show(v) for v in r.allowed)}.", "enum": list(r.allowed)}
    return Annotated[Any, WithJsonSchema(schema)]


Penalty = Annotated[float | None, Field(ge=-2.0, le=2.0)]


class ChatRequest(_Strict):
    model_config = ConfigDict(extra="forbid", strict=True, protected_namespaces=(), populate_by_name=True)

    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, description="upper bound on generated tokens (eos included)")
    max_tokens: int | None = Field(None, ge=1, description="the older name of max_completion_tokens")
    temperature: float | None = Field(None, ge=0.0, le=2.0,
                                      description="0 (anything below 0.001) or unset: greedy, as in the safety evals")
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    # The schema states what _stops enforces, so the OpenAPI document (serve/openapi.py) has the same limits.
    stop: Annotated[str | list[str] | None, WithJsonSchema({"anyOf": [
        {"type": "string", "minLength": 1},
        {"type": "array", "items": {"type": "string", "minLength": 1}, "maxItems": 4},
        {"type": "null"}]})] = None
    seed: int | None = Field(None, ge=-(2 ** 63), le=2 ** 64 - 1,
                             description="sampling with the same seed and settings gives the same reply")
    frequency_penalty: Penalty = None
    presence_penalty: Penalty = None
    logit_bias: dict[str, int] | None = Field(None, description="token id (as a string) -> bias in [-100, 100]")
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS, description="needs logprobs: true")
    response_format: ResponseFormat | None = Field(
        None, description="json_object and json_schema are enforced by constrained decoding (llguidance)")
    stream: bool | None = Field(None, description="server-sent events, OpenAI chunk format, ending with data: [DONE]")
    stream_options: StreamOptions | None = None
    n: int | None = Field(None, ge=1, description="one choice per request: n > 1 is refused")
    user: str | None = Field(None, max_length=256, description="end-user id: logged as a hash (abuse tracing)")
    safety_identifier: str | None = Field(None, max_length=128, description="as user")
    prompt_cache_key: str | None = Field(None, description="accepted; this service keeps no prompt cache")
    prompt_cache_retention: Literal["in_memory", "24h"] | None = Field(
        None, description="accepted; this service keeps no prompt cache")
    prompt_cache_options: dict[str, Any] | None = Field(None, description="accepted; this service keeps no prompt "
                                                                          "cache")
    tools: _refused("tools") = None
    tool_choice: _refused("tool_choice") = None
    parallel_tool_calls: _refused("parallel_tool_calls") = None
    functions: _refused("functions") = None
    function_call: _refused("function_call") = None
    audio: _refused("audio") = None
    modalities: _refused("modalities") = None
    prediction: _refused("prediction") = None
    web_search_options: _refused("web_search_options") = None
    store: _refused("store") = None
    metadata: _refused("metadata") = None
    reasoning_effort: _refused("reasoning_effort") = None
    verbosity: _refused("verbosity") = None
    service_tier: _refused("service_tier") = None
    moderation: _refused("moderation") = None

    @field_validator(*REFUSED)
    @classmethod
    def _refuse(cls, v: Any, info: ValidationInfo) -> Any:
        return REFUSED[info.field_name].check(info.field_name, v)

    @field_validator("n")
    @classmethod
    def _one(cls, v: int | None) -> int | None:
        if v is not None and v > 1:
            raise RequestRefused("n > 1 is not supported: one choice per request; send separate requests (with "
                                 "different seeds when sampling)")
        return v

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: str | list[str] | None) -> list[str] | None:
        stops = [v] if isinstance(v, str) else v
        if stops is not None and (len(stops) > 4 or any(not s for s in stops)):
            raise ValueError("stop must be a non-empty string or a list of at most 4 non-empty strings")
        return stops or None

    @field_validator("logit_bias")
    @classmethod
    def _bias(cls, v: dict[str, int] | None) -> dict[str, int] | None:
        for key, bias in (v or {}).items():
            if not key.isascii() or not key.isdigit():
                raise ValueError(f"key {key[:20]!r} is not a token id (a decimal number as a string)")
            if not -MAX_LOGIT_BIAS <= bias <= MAX_LOGIT_BIAS:
                raise ValueError(f"bias for token {key} is {bias}, outside [-100, 100]")
        return v

    @model_validator(mode="after")
    def _combinations(self) -> "ChatRequest":
        if self.top_logprobs is not None and not self.logprobs:
            raise Problem("top_logprobs needs logprobs: true", sub="top_logprobs")
        if self.stream_options is not None and not self.stream:
            raise Problem("stream_options is only allowed with stream: true", sub="stream_options")
        if None not in (self.max_tokens, self.max_completion_tokens) and self.max_tokens != self.max_completion_tokens:
            raise Problem("max_tokens and max_completion_tokens differ; send one of them (max_tokens is the older "
                          "name)", sub="max_completion_tokens")
        return self

    @property
    def token_limit(self) -> tuple[str, int | None]:
        """(the field that set it, the requested limit on generated tokens)."""
        if self.max_completion_tokens is not None:
            return "max_completion_tokens", self.max_completion_tokens
        return "max_tokens", self.max_tokens

    def template_messages(self) -> list[dict[str, str]]:
        return [m.template_message() for m in self.messages]


_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none", "literal", "function-after", "function-before",
              "function-plain", "function-wrap"}


@dataclass(frozen=True)
class RequestError:
    """What a 400 reports: the field (``param``), why, and OpenAI's ``code``."""

    param: str
    message: str
    code: str

    @property
    def text(self) -> str:
        return f"{self.param}: {self.message}"


def request_error(err: ValidationError) -> RequestError:
    """The first problem: field path like ``messages[0].role``, message, code; never echoes the input value."""
    e = err.errors(include_input=False, include_url=False)[0]
    path = _path(e["loc"])
    cause = (e.get("ctx") or {}).get("error")
    if isinstance(cause, Problem):
        if cause.sub:
            path = f"{path}.{cause.sub}" if path else cause.sub
        return RequestError(path or "body", cause.message, cause.code)
    if e["type"] == "extra_forbidden":
        return RequestError(path, "unrecognized request argument (docs/SERVICE.md lists every supported field)",
                            "unknown_parameter")
    message = str(cause) if isinstance(cause, ValueError) else e["msg"]
    return RequestError(path or "body", message, "invalid_value")


def first_error(err: ValidationError) -> tuple[str, str]:
    """(field path, message) of the first problem, as ``request_error`` (used by serve/feedback.py)."""
    problem = request_error(err)
    return problem.param, problem.message


def _path(loc: tuple[Any, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, str) and (part in _TYPE_TAGS or "[" in part):
            continue  # the union member pydantic tried ("stop.str"), not a field
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path
