"""Response bodies in OpenAI's shapes: chat.completion, chat.completion.chunk (as server-sent events), errors."""

from __future__ import annotations

import json
from typing import Any

from serve.moderation import ModerationResult

CONTENT_FILTER = "content_filter"  # OpenAI's finish_reason for a reply replaced by moderation


def error_body(message: str, *, param: str | None = None, kind: str = "invalid_request_error",
               code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion(*, rid: str, created: int, model: str, content: str, finish_reason: str,
               moderation: ModerationResult, prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    return {
        "id": rid, "object": "chat.completion", "created": created, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                     "finish_reason": finish_reason, "moderation": moderation.as_json()}],
        "usage": usage(prompt_tokens, completion_tokens),
    }


def chunk(*, rid: str, created: int, model: str, delta: dict[str, Any], finish_reason: str | None = None,
          moderation: ModerationResult | None = None) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish_reason}
    if moderation is not None:
        choice["moderation"] = moderation.as_json()
    return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model, "choices": [choice]}


def usage_chunk(*, rid: str, created: int, model: str, prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model, "choices": [],
            "usage": usage(prompt_tokens, completion_tokens)}


def sse(data: dict[str, Any] | str) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"data: {payload}\n\n".encode()


DONE = sse("[DONE]")
