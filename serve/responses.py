"""Response bodies in OpenAI's shapes: chat.completion, chat.completion.chunk (as server-sent events), errors.

Error ``type`` and ``code`` follow OpenAI's API: ``invalid_request_error`` for anything the client can fix (with
``param`` naming the field and ``code`` such as ``unsupported_parameter``, ``model_not_found``,
``invalid_api_key``), ``server_error`` for the service's own failures.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

from serve.moderation import ModerationResult

CONTENT_FILTER = "content_filter"  # OpenAI's finish_reason for a reply replaced by moderation
SERVICE_TIER = "default"
INVALID_REQUEST, SERVER_ERROR = "invalid_request_error", "server_error"


def error_body(message: str, *, param: str | None = None, kind: str = INVALID_REQUEST,
               code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": 0}}  # no prompt cache here


MIN_LOGPROB = -9999.0  # what OpenAI reports for a token the model gave (next to) no probability; JSON has no -inf


def _logprob(value: float) -> float:
    return value if value >= MIN_LOGPROB else MIN_LOGPROB  # also maps nan (comparison false) to the floor


def token_string(raw: bytes) -> str:
    """A token as OpenAI shows it: its text, or ``bytes:\\xe2\\x80`` for part of a UTF-8 character."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)


def token_logprob(raw: bytes, logprob: float, top: list[tuple[bytes, float]]) -> dict[str, Any]:
    """One entry of ``logprobs.content``: the token as text, its bytes, its log-probability, alternatives."""
    return {"token": token_string(raw), "logprob": _logprob(logprob), "bytes": list(raw),
            "top_logprobs": [{"token": token_string(t), "logprob": _logprob(lp), "bytes": list(t)} for t, lp in top]}


def logprobs_block(entries: list[dict[str, Any]] | None) -> dict[str, Any] | None:
    return None if entries is None else {"content": entries, "refusal": None}


def completion(*, rid: str, created: int, model: str, fingerprint: str, content: str, finish_reason: str,
               moderation: ModerationResult, prompt_tokens: int, completion_tokens: int,
               logprobs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    blocked = finish_reason == CONTENT_FILTER
    return {
        "id": rid, "object": "chat.completion", "created": created, "model": model,
        "system_fingerprint": fingerprint, "service_tier": SERVICE_TIER,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content,
                                             "refusal": content if blocked else None, "annotations": []},
                     "logprobs": logprobs_block(logprobs), "finish_reason": finish_reason,
                     "moderation": moderation.as_json()}],
        "usage": usage(prompt_tokens, completion_tokens),
    }


def chunk(*, rid: str, created: int, model: str, fingerprint: str, delta: dict[str, Any],
          finish_reason: str | None = None, moderation: ModerationResult | None = None,
          logprobs: list[dict[str, Any]] | None = None, obfuscate: bool = False,
          with_usage: bool = False) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": logprobs_block(logprobs),
                              "finish_reason": finish_reason}
    if moderation is not None:
        choice["moderation"] = moderation.as_json()
    body = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
            "system_fingerprint": fingerprint, "service_tier": SERVICE_TIER, "choices": [choice]}
    if with_usage:  # OpenAI: with include_usage every chunk has usage, null until the last one
        body["usage"] = None
    if obfuscate:
        body["obfuscation"] = obfuscation(delta)
    return body


def obfuscation(delta: dict[str, Any]) -> str:
    """Random padding that rounds the delta's text up to a multiple of 32 characters and adds 0-31 more, so a
    chunk's size on the wire does not give away its token's length (OpenAI's stream obfuscation)."""
    size = len(str(delta.get("content") or ""))
    pad = (-size) % 32 + secrets.randbelow(32) + 1
    return secrets.token_urlsafe(pad)[:pad]


def usage_chunk(*, rid: str, created: int, model: str, fingerprint: str, prompt_tokens: int,
                completion_tokens: int) -> dict[str, Any]:
    return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
            "system_fingerprint": fingerprint, "service_tier": SERVICE_TIER, "choices": [],
            "usage": usage(prompt_tokens, completion_tokens)}


def model_card(*, model_id: str, created: int, **extra: Any) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": created, "owned_by": "harmgate", **extra}


def sse(data: dict[str, Any] | str) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"data: {payload}\n\n".encode()


DONE = sse("[DONE]")
