"""``POST /v1/feedback``: a rating of a completion this service returned, stored durably under its model version.

Body: ``{"completion_id": "chatcmpl-...", "rating": "good"|"bad", "category": "...", "comment": "..."}``
(category and comment optional; unknown keys are refused). A client can rate only completions the service
recorded (serve/completion_log.py) and that were issued to the same API key, so nobody can submit text the model
never produced, or rate someone else's conversation; an unknown id and someone else's id both get 404. Requests
are authenticated like every ``/v1/`` route, rate-limited per API key (serve/ratelimit.py), and written through
the spool (serve/spool.py) to ``<prefix>/<name>/<version>/feedback/``. docs/FEEDBACK.md has the whole loop.
"""

from __future__ import annotations

import logging
import math
import secrets
from datetime import datetime, timezone
from typing import Any, Literal

from flask import Flask, jsonify, request
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from gates.registry import Registry
from harmgate.objectstore import RegistryError
from harmgate.config import FeedbackConfig
from serve.completion_log import CompletionLog, owner_id
from serve.errors import RequestProblem
from serve.ratelimit import TokenBucket
from serve.schemas import first_error
from serve.spool import Spool

log = logging.getLogger("harmgate.serve")
FEEDBACK_PATH = "/v1/feedback"
COMPLETION_ID = r"^chatcmpl-[0-9a-f]{32}$"


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    completion_id: str = Field(pattern=COMPLETION_ID, description="The id of a chat completion this service "
                                                                  "returned to the same API key")
    rating: Literal["good", "bad"]
    category: str | None = Field(None, max_length=64, description="One of the service's feedback.categories")
    comment: str | None = None

    @field_validator("comment")
    @classmethod
    def _encodable(cls, v: str | None) -> str | None:
        # A lone UTF-16 surrogate ("\ud800") is valid JSON but cannot be stored as UTF-8 (as in serve/schemas.py).
        try:
            if v is not None:
                v.encode("utf-8")
        except UnicodeEncodeError as err:
            raise ValueError(f"contains an unpaired UTF-16 surrogate at character {err.start}; send valid "
                             f"Unicode text") from None
        return v


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class FeedbackService:
    """The completion log, the feedback store and the route, for one served model name."""

    def __init__(self, config: FeedbackConfig, name: str, spool: Spool, completions: CompletionLog) -> None:
        self.config = config
        self.name = name
        self.spool = spool
        self.completions = completions
        self.limiter = TokenBucket(config.rate_limit_per_minute, config.rate_limit_burst)

    @classmethod
    def build(cls, config: FeedbackConfig, registry: Registry, name: str) -> "FeedbackService":
        spool = Spool(config.spool_dir, registry.objects, registry.prefix, flush_records=config.flush_records,
                      flush_interval_s=config.flush_interval_s)
        completions = CompletionLog(spool, registry.objects, registry.prefix, name,
                                    memory_index=config.memory_index)
        return cls(config, name, spool, completions)

    def start(self) -> None:
        self.spool.start()

    def close(self) -> None:
        self.spool.close()

    # -- the completion log --------------------------------------------------------------------------
    def record_completion(self, *, rid: str, version: str, messages: list[dict[str, Any]], reply: str,
                          finish_reason: str, moderated: bool, owner: str, prompt_tokens: int,
                          completion_tokens: int) -> None:
        """Called before the client sees ``rid``. A disk failure is logged, not raised: the completion is still
        served, only feedback on it will be refused (404)."""
        record = {"id": rid, "created": utc_now(), "model": self.name, "version": version, "owner": owner,
                  "messages": messages, "reply": reply, "finish_reason": finish_reason, "moderated": moderated,
                  "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens}}
        try:
            self.completions.record(record)
        except OSError as err:
            log.error("%s: not recorded in the completion log (%s); feedback on it will be refused", rid, err)

    # -- the route -----------------------------------------------------------------------------------
    def register(self, app: Flask) -> None:
        config = self.config

        @app.post(FEEDBACK_PATH)
        def feedback():
            owner = owner_id(request.headers.get("Authorization"))
            wait = self.limiter.take(owner if owner != "anonymous" else f"ip:{request.remote_addr}")
            if wait > 0:
                raise RequestProblem(429, f"too many feedback requests: at most {config.rate_limit_per_minute:g} a "
                                          f"minute ({config.rate_limit_burst} at once) per API key; retry later",
                                     kind="rate_limit_error", headers={"Retry-After": str(max(1, math.ceil(wait)))})
            body = request.get_json(force=True, silent=True)
            if not isinstance(body, dict):
                raise RequestProblem(400, "request body must be a JSON object", param="body")
            try:
                req = FeedbackRequest.model_validate(body)
            except ValidationError as err:
                field, msg = first_error(err)
                raise RequestProblem(400, f"{field}: {msg}", param=field) from None
            if req.category is not None and req.category not in config.categories:
                raise RequestProblem(400, f"category: must be one of {', '.join(config.categories)}",
                                     param="category")
            if req.comment is not None and len(req.comment) > config.max_comment_chars:
                raise RequestProblem(400, f"comment: at most {config.max_comment_chars} characters", param="comment")
            try:
                completion = self.completions.lookup(req.completion_id)
            except RegistryError as err:
                raise RequestProblem(503, f"cannot check the completion id now ({err}); retry later",
                                     kind="service_unavailable", headers={"Retry-After": "30"}) from None
            if completion is None or completion.get("owner") != owner:
                raise RequestProblem(404, f"completion {req.completion_id} was not returned to this API key by this "
                                          f"service; feedback is accepted only for its own completions",
                                     param="completion_id", kind="not_found")
            record = {"id": f"fb-{secrets.token_hex(16)}", "completion_id": req.completion_id, "rating": req.rating,
                      "category": req.category, "comment": req.comment, "created": utc_now(), "owner": owner,
                      "model": self.name, "version": completion["version"]}
            try:
                self.spool.append(self.name, completion["version"], "feedback", record)
            except OSError as err:
                log.error("feedback %s not stored: %s", record["id"], err)
                raise RequestProblem(503, "feedback could not be stored; retry later", kind="service_unavailable",
                                     headers={"Retry-After": "30"}) from None
            return jsonify({"id": record["id"], "object": "feedback", "completion_id": req.completion_id,
                            "rating": req.rating, "category": req.category,
                            "model": f"{self.name}:{completion['version']}", "created": record["created"]}), 201
