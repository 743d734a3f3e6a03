"""The service's OpenAPI 3.1 document, served at ``/openapi.json``.

Request bodies come from the pydantic models the routes validate with (serve/schemas.py), response bodies from
the models below, so the document cannot drift from the code silently: tests/test_reliability_api.py checks that
every Flask route is in ``OPERATIONS`` (and nothing else is), and fuzzes the running service with schemathesis
against this document, which validates every response against the schema it declares here.

Adding a route is one entry in ``OPERATIONS``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from harmgate.config import ServiceConfig
from serve.feedback import FEEDBACK_PATH, FeedbackRequest
from serve.schemas import ChatRequest

OPENAPI_PATH = "/openapi.json"
MODEL_PATH = "/v1/models/<path:model_id>"  # Flask's rule; the document writes it /v1/models/{model_id}


# -- response bodies (serve/responses.py and serve/app.py build them; the fuzz test checks each against these) --
class _Body(BaseModel):
    model_config = ConfigDict(extra="allow")


class ErrorDetail(_Body):
    message: str
    type: str = Field(description="invalid_request_error (the client can fix it), server_error, requests (429)")
    param: str | None = Field(description="the request field at fault, e.g. tools or messages[0].content[1].type")
    code: str | None = Field(description="OpenAI's codes: unsupported_parameter, unknown_parameter, invalid_value, "
                                         "invalid_json, context_length_exceeded, invalid_api_key, model_not_found, "
                                         "request_too_large, rate_limit_exceeded, service_unavailable")


class ErrorBody(_Body):
    error: ErrorDetail


class Moderation(_Body):
    flagged: bool
    score: float
    threshold: float
    scorer: str
    error: str | None = None


class AssistantMessage(_Body):
    role: Literal["assistant"]
    content: str
    refusal: str | None = None  # the moderation refusal, when finish_reason is content_filter


class TopLogprob(_Body):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class Logprobs(_Body):
    content: list[TokenLogprob] | None
    refusal: list[TokenLogprob] | None = None


class Choice(_Body):
    index: int
    message: AssistantMessage
    logprobs: Logprobs | None = None
    finish_reason: str
    moderation: Moderation


class Usage(_Body):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletion(_Body):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    system_fingerprint: str
    choices: list[Choice]
    usage: Usage


class ModelCard(_Body):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    name: str
    version: str
    manifest_sha256: str
    base_model: str | None
    published_at: str | None
    gate: dict[str, Any]
    moderation: dict[str, Any]
    limits: dict[str, int]


class ModelList(_Body):
    object: Literal["list"]
    data: list[ModelCard]


class Health(_Body):
    status: Literal["ok"]
    ready: bool
    model: str | None
    version: str | None
    manifest_sha256: str | None = None
    reason: str | None = None


class Ready(_Body):
    status: Literal["ready"]
    model: str
    queued: int


class NotReady(_Body):
    status: Literal["unavailable"]
    reason: str


class FeedbackReceipt(_Body):
    id: str
    object: Literal["feedback"]
    completion_id: str
    rating: Literal["good", "bad"]
    category: str | None
    model: str
    created: str


# -- operations ------------------------------------------------------------------------------------------------
ERRORS = {400: "invalid request or a field this service does not support (param names it)",
          401: "missing or invalid API key (code invalid_api_key)",
          404: "not found (code model_not_found for a model this service does not serve)", 413: "body over service.max_body_bytes", 429: "queue full, retry later",
          500: "generation failed", 503: "no approved version is being served"}


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    summary: str
    responses: dict[int, Any]  # status -> a response model, a media type string, or None (errors: ErrorBody)
    request: type[BaseModel] | None = None
    tags: tuple[str, ...] = field(default=("service",))
    path_params: tuple[tuple[str, str], ...] = ()  # (name, description), each a string in the path


OPERATIONS: tuple[Operation, ...] = (
    Operation("post", "/v1/chat/completions", "Chat completion (JSON, or server-sent events with stream: true)",
              {200: ChatCompletion, 400: None, 401: None, 404: None, 413: None, 429: None, 500: None, 503: None},
              request=ChatRequest, tags=("model",)),
    Operation("get", "/v1/models", "The served version, its gate decision, moderation and limits",
              {200: ModelList, 401: None, 503: None}, tags=("model",)),
    Operation("get", "/v1/models/{model_id}", "One model by id (name:version, or the name)",
              {200: ModelCard, 401: None, 404: None, 503: None}, tags=("model",),
              path_params=(("model_id", "the served model's id (name:version) or name"),)),
    Operation("get", "/healthz", "Liveness (200 while the process runs)", {200: Health}),
    Operation("get", "/readyz", "Readiness: 200 while an approved version is served", {200: Ready, 503: NotReady}),
    Operation("get", "/metrics", "Prometheus metrics", {200: "text/plain"}),
    Operation("get", "/dashboard", "The served version's report (self-contained HTML)",
              {200: "text/html", 401: None, 404: None}, tags=("model",)),
    Operation("get", OPENAPI_PATH, "This document", {200: "application/json"}),
)


def optional_operations(service: ServiceConfig) -> tuple[Operation, ...]:
    """Routes that exist only when their feature is switched on: POST /v1/feedback (serve/feedback.py)."""
    if not service.feedback.enabled:
        return ()
    return (Operation("post", FEEDBACK_PATH, "Rate (good/bad) a completion this service returned to the same key",
                      {201: FeedbackReceipt, 400: None, 401: None, 404: None, 429: None, 503: None},
                      request=FeedbackRequest, tags=("feedback",)),)


def _ref(model: type[BaseModel], components: dict[str, Any]) -> dict[str, str]:
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    for name, sub in schema.pop("$defs", {}).items():
        components[name] = sub
    components[model.__name__] = schema
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _response(status: int, spec: Any, components: dict[str, Any], op: Operation) -> dict[str, Any]:
    if spec is None:
        return {"description": ERRORS[status], "content": {"application/json": {"schema": _ref(ErrorBody, components)}}}
    if isinstance(spec, str):
        return {"description": "OK", "content": {spec: {"schema": {"type": "object"} if spec.endswith("json")
                                                      else {"type": "string"}}}}
    content: dict[str, Any] = {"application/json": {"schema": _ref(spec, components)}}
    if op.request is ChatRequest:
        # Each event's data is a chat.completion.chunk (or an error body), the last one is [DONE].
        content["text/event-stream"] = {"schema": {"type": "object", "required": ["data"],
                                                   "properties": {"data": {"type": "string"}}}}
    return {"description": "OK" if status < 300 else ERRORS.get(status, "see schema"), "content": content}


def _constrain(components: dict[str, Any], model: str, prop: str, json_type: str, **constraints: Any) -> None:
    schema = components.get(model, {}).get("properties", {}).get(prop)
    for option in (schema.get("anyOf", [schema]) if schema is not None else []):
        if option.get("type") == json_type:
            option.update(constraints)


def openapi_document(service: ServiceConfig, *, protected: tuple[str, ...], version: str = "1") -> dict[str, Any]:
    """The document for this service's settings (limits such as max_tokens come from ``service``)."""
    components: dict[str, Any] = {}
    paths: dict[str, dict[str, Any]] = {}
    for op in (*OPERATIONS, *optional_operations(service)):
        entry: dict[str, Any] = {"summary": op.summary, "operationId": f"{op.method}_{op.path.strip('/')}"
                                 .replace("/", "_").replace(".", "_"), "tags": list(op.tags),
                                 "responses": {str(s): _response(s, spec, components, op)
                                               for s, spec in op.responses.items()}}
        if op.path.startswith(protected):
            entry["security"] = [{"bearer": []}]
        if op.path_params:
            entry["parameters"] = [{"name": name, "in": "path", "required": True, "description": text,
                                    "schema": {"type": "string", "minLength": 1}} for name, text in op.path_params]
        if op.request is not None:
            entry["requestBody"] = {"required": True, "content": {
                "application/json": {"schema": _ref(op.request, components)}}}
        paths.setdefault(op.path, {})[op.method] = entry
    # This service's own settings, which the routes enforce (a larger max_tokens, another category: 400).
    for limit in ("max_tokens", "max_completion_tokens"):
        _constrain(components, "ChatRequest", limit, "integer", maximum=service.max_new_tokens)
    _constrain(components, "FeedbackRequest", "category", "string", enum=list(service.feedback.categories))
    return {
        "openapi": "3.1.0",
        "info": {"title": "harmgate service", "version": version,
                 "description": "OpenAI-style chat completions over the one gate-approved, hash-verified model "
                                "version; every reply is moderated. docs/SERVICE.md explains each endpoint."},
        "paths": paths,
        "components": {"schemas": components,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }
