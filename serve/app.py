"""The Flask app: an OpenAI-style ``/v1/chat/completions`` over one verified, approved model version.

Prompts and completions are never logged (they may hold user data or harmful text); only ids, token counts
and timings are.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from flask import Flask, jsonify, request
from pydantic import ValidationError
from werkzeug.exceptions import HTTPException

from gates.registry import ApprovedModel
from harmgate.config import ServiceConfig
from serve.engine import Engine
from serve.schemas import ChatRequest, first_error

log = logging.getLogger("harmgate.serve")
MAX_BODY_BYTES = 1 << 20


def _error(status: int, message: str, *, param: str | None = None, kind: str = "invalid_request_error"):
    return jsonify({"error": {"message": message, "type": kind, "param": param}}), status


def create_app(model: ApprovedModel, service: ServiceConfig, *, engine: Engine | None = None) -> Flask:
    """``engine`` lets tests pass an already-loaded model; by default it is loaded from ``model.local_dir``."""
    engine = engine or Engine.load(model.local_dir)
    served = f"{model.name}:{model.version}"
    app = Flask("harmgate.serve")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES

    @app.get("/healthz")
    def healthz():
        return jsonify({"status": "ok", "model": model.name, "version": model.version,
                        "manifest_sha256": model.manifest_sha256})

    @app.post("/v1/chat/completions")
    def chat_completions():
        body = request.get_json(force=True, silent=True)
        if body is None:
            return _error(400, "request body is not valid JSON", param="body")
        if not isinstance(body, dict):
            return _error(400, "request body must be a JSON object", param="body")
        try:
            req = ChatRequest.model_validate(body)
        except ValidationError as err:
            field, msg = first_error(err)
            return _error(400, f"{field}: {msg}", param=field)
        if req.model not in (None, model.name, served):
            return _error(404, f"model {req.model!r} is not served here; this service serves {served}",
                          param="model", kind="model_not_found")
        prompt_ids = engine.encode_chat([m.model_dump() for m in req.messages])
        if len(prompt_ids) > service.max_prompt_tokens:
            return _error(400, f"prompt is {len(prompt_ids)} tokens, over this service's limit of "
                               f"{service.max_prompt_tokens}", param="messages")
        max_new = min(req.max_tokens or service.max_new_tokens, service.max_new_tokens)
        started = time.perf_counter()
        gen = engine.generate(prompt_ids, max_new_tokens=max_new, temperature=req.temperature, top_p=req.top_p,
                              stop=req.stop)
        rid = f"chatcmpl-{uuid.uuid4().hex}"
        log.info("%s model=%s prompt_tokens=%d completion_tokens=%d finish=%s %.2fs", rid, served,
                 gen.prompt_tokens, gen.completion_tokens, gen.finish_reason, time.perf_counter() - started)
        response: dict[str, Any] = {
            "id": rid, "object": "chat.completion", "created": int(time.time()), "model": served,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": gen.text},
                         "finish_reason": gen.finish_reason}],
            "usage": {"prompt_tokens": gen.prompt_tokens, "completion_tokens": gen.completion_tokens,
                      "total_tokens": gen.prompt_tokens + gen.completion_tokens},
        }
        return jsonify(response)

    @app.errorhandler(HTTPException)
    def http_error(err: HTTPException):
        return _error(err.code or 500, err.description or err.name, kind="http_error")

    @app.errorhandler(Exception)
    def internal_error(err: Exception):
        log.exception("internal error (%s)", type(err).__name__)
        return _error(500, "internal error", kind="server_error")

    return app
