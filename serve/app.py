"""The Flask app: an OpenAI-style API over the one verified, approved model version in the slot.

Endpoints: ``POST /v1/chat/completions`` (JSON or server-sent events), ``GET /v1/models``, ``/healthz``
(liveness), ``/readyz`` (503 while nothing valid is served), ``/metrics`` (Prometheus), ``/dashboard`` (the
latest report), ``/openapi.json`` (serve/openapi.py). ``/v1/*`` and ``/dashboard`` need a bearer key when keys are configured.

Prompts and replies are never logged unless ``service.log_prompts`` is on (they may hold user data or harmful
text); by default only ids, token counts, moderation scores and timings are.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from flask import Flask, Response, g, jsonify, request
from jinja2 import TemplateError
from pydantic import ValidationError
from werkzeug.exceptions import HTTPException

from harmgate.config import ServiceConfig
from serve import responses as R
from serve.auth import ApiKeys
from serve.batcher import BatcherClosed, QueueFull
from serve.completion_log import owner_id
from serve.dashboard import Dashboard
from serve.engine import CANCELLED, ERROR, SamplingParams, Ticket
from serve.metrics import Metrics
from serve.moderation import ModerationResult, Moderator
from serve.openapi import OPENAPI_PATH, openapi_document
from serve.schemas import ChatRequest, first_error
from serve.slot import ModelSlot, Served

log = logging.getLogger("harmgate.serve")
PROTECTED = ("/v1/", "/dashboard")
ENDPOINTS = {"/v1/chat/completions": "chat", "/v1/feedback": "feedback",
             "/v1/models": "models", "/healthz": "healthz", "/readyz": "readyz",
             "/metrics": "metrics", "/dashboard": "dashboard", OPENAPI_PATH: "openapi"}
# The report is self-contained (inline CSS and SVG, no scripts) and shows model text: nothing in it may run,
# load or send anything.
DASHBOARD_CSP = ("default-src 'none'; style-src 'unsafe-inline'; img-src data:; font-src data:; "
                 "form-action 'none'; frame-ancestors 'none'; base-uri 'none'")


@dataclass
class Runtime:
    """Everything the routes use; built by serve.bootstrap (or a test)."""

    service: ServiceConfig
    slot: ModelSlot
    moderator: Moderator
    keys: ApiKeys
    metrics: Metrics
    dashboard: Dashboard
    feedback: Any = None  # serve.feedback.FeedbackService when service.feedback.enabled: completion log + route


class RequestProblem(Exception):
    def __init__(self, status: int, message: str, *, param: str | None = None, kind: str = "invalid_request_error",
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.kind, self.headers = status, message, param, kind, headers or {}


def _error(status: int, message: str, *, param: str | None = None, kind: str = "invalid_request_error",
           headers: dict[str, str] | None = None):
    return jsonify(R.error_body(message, param=param, kind=kind)), status, headers or {}


def _unavailable(reason: str) -> RequestProblem:
    return RequestProblem(503, f"no model is being served: {reason}", kind="service_unavailable",
                          headers={"Retry-After": "30"})


def gate_summary(manifest: dict[str, Any]) -> dict[str, Any]:
    """The gate's decision as recorded in the approved manifest (what a client may want to check)."""
    verdict = manifest.get("verdict") if isinstance(manifest.get("verdict"), dict) else {}
    keep = ("name", "metric", "direction", "severity", "passed", "base", "tuned", "delta", "tuned_ci95")
    return {"passed": verdict.get("passed"), "decided_at": verdict.get("decided_at"),
            "blocking_failures": verdict.get("blocking_failures"), "warnings": verdict.get("warnings"),
            "kpis": [{k: kpi[k] for k in keep if k in kpi}
                     for kpi in verdict.get("kpis") or [] if isinstance(kpi, dict)]}


def create_app(rt: Runtime) -> Flask:
    service, slot, moderator, metrics = rt.service, rt.slot, rt.moderator, rt.metrics
    app = Flask("harmgate.serve")
    app.config["MAX_CONTENT_LENGTH"] = service.max_body_bytes

    @app.before_request
    def _auth():
        g.started = time.perf_counter()
        if rt.keys.enabled and request.path.startswith(PROTECTED) and \
                not rt.keys.check(request.headers.get("Authorization")):
            return _error(401, "missing or invalid API key: send 'Authorization: Bearer <key>'",
                          kind="authentication_error", headers={"WWW-Authenticate": 'Bearer realm="harmgate"'})
        return None

    @app.after_request
    def _count(resp: Response) -> Response:
        endpoint = ENDPOINTS.get(request.path, "other")
        metrics.requests.labels(endpoint, str(resp.status_code)).inc()
        if not g.get("streaming"):  # a stream's duration is observed when its last byte is out
            metrics.latency.labels(endpoint).observe(time.perf_counter() - g.get("started", time.perf_counter()))
        return resp

    @app.get("/healthz")
    def healthz():
        served, reason = slot.get()
        body: dict[str, Any] = {"status": "ok", "ready": served is not None}
        if served is not None:
            body.update(model=served.model.name, version=served.version,
                        manifest_sha256=served.model.manifest_sha256)
        else:
            body.update(model=None, version=None, reason=reason)
        return jsonify(body)

    @app.get("/readyz")
    def readyz():
        served, reason = slot.get()
        if served is None:
            return jsonify({"status": "unavailable", "reason": reason}), 503
        return jsonify({"status": "ready", "model": served.label, "queued": served.batcher.waiting})

    document = openapi_document(service, protected=PROTECTED)

    @app.get(OPENAPI_PATH)
    def openapi():
        return jsonify(document)

    @app.get("/metrics")
    def prometheus():
        data, content_type = metrics.render()
        return Response(data, content_type=content_type)

    @app.get("/v1/models")
    def models():
        served, reason = slot.get()
        if served is None:
            raise _unavailable(reason)
        m = served.model
        return jsonify({"object": "list", "data": [{
            "id": served.label, "object": "model", "created": int(served.loaded_at), "owned_by": "harmgate",
            "name": m.name, "version": m.version, "manifest_sha256": m.manifest_sha256,
            "base_model": m.manifest.get("base_model"), "published_at": m.manifest.get("created_at"),
            "gate": gate_summary(m.manifest),
            "moderation": {"scorer": moderator.name, "threshold": moderator.threshold},
            "limits": {"max_prompt_tokens": service.max_prompt_tokens, "max_tokens": service.max_new_tokens},
        }]})

    @app.get("/dashboard")
    def dashboard():
        served, _ = slot.get()
        name, version = (served.model.name, served.version) if served else (None, None)
        report, tried = rt.dashboard.find(name, version)
        if report is None:
            return _error(404, f"no report to show; looked in: {'; '.join(tried)}. Write one with `harmgate report "
                               f"RUN_DIR` and set service.dashboard_path, or publish the run (it attaches its report)",
                          kind="not_found")
        return Response(report.html, content_type="text/html; charset=utf-8",
                        headers={"Content-Security-Policy": DASHBOARD_CSP, "X-Content-Type-Options": "nosniff",
                                 "X-Harmgate-Report-Source": report.source})

    @app.post("/v1/chat/completions")
    def chat_completions():
        rid, started = f"chatcmpl-{uuid.uuid4().hex}", g.started
        owner = owner_id(request.headers.get("Authorization"))  # who may give feedback on this completion
        req = _parse(request)
        served, ticket = _start(req)
        created = int(time.time())
        if req.stream:
            g.streaming = True
            return Response(_stream(rid, created, started, req, served, ticket, owner),
                            content_type="text/event-stream; charset=utf-8",
                            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        ticket.wait()
        _raise_if_failed(ticket)
        gen = served.engine.result(ticket)
        verdict = moderator.check(gen.text)
        content, finish = (moderator.refusal, R.CONTENT_FILTER) if verdict.flagged else (gen.text, gen.finish_reason)
        _account(rid, started, served, ticket, verdict, stream=False, finish=finish, text=gen.text, req=req,
                 owner=owner)
        return jsonify(R.completion(rid=rid, created=created, model=served.label, content=content,
                                    finish_reason=finish, moderation=verdict, prompt_tokens=gen.prompt_tokens,
                                    completion_tokens=gen.completion_tokens))

    def _parse(req: Any) -> ChatRequest:
        body = req.get_json(force=True, silent=True)
        if body is None:
            raise RequestProblem(400, "request body is not valid JSON", param="body")
        if not isinstance(body, dict):
            raise RequestProblem(400, "request body must be a JSON object", param="body")
        try:
            return ChatRequest.model_validate(body)
        except ValidationError as err:
            field, msg = first_error(err)
            raise RequestProblem(400, f"{field}: {msg}", param=field) from None

    def _start(req: ChatRequest) -> tuple[Served, Ticket]:
        if req.max_tokens is not None and req.max_tokens > service.max_new_tokens:
            raise RequestProblem(400, f"max_tokens is {req.max_tokens}, over this service's limit of "
                                      f"{service.max_new_tokens}", param="max_tokens")
        for _ in range(2):  # a second try only if a hot swap closed the version taken a moment ago
            served, reason = slot.get()
            if served is None:
                raise _unavailable(reason)
            if req.model not in (None, served.model.name, served.label):
                raise RequestProblem(404, f"model {req.model!r} is not served here; this service serves "
                                          f"{served.label}", param="model", kind="model_not_found")
            try:
                prompt_ids = served.engine.encode_chat([m.model_dump() for m in req.messages])
            except TemplateError as err:  # e.g. a template that wants alternating user/assistant turns
                raise RequestProblem(400, f"messages: the model's chat template rejected them: {err}",
                                     param="messages") from None
            if len(prompt_ids) > service.max_prompt_tokens:
                raise RequestProblem(400, f"prompt is {len(prompt_ids)} tokens, over this service's limit of "
                                          f"{service.max_prompt_tokens}", param="messages")
            params = SamplingParams(max_new_tokens=req.max_tokens or service.max_new_tokens,
                                    temperature=req.temperature, top_p=req.top_p, stop=tuple(req.stop or ()))
            try:
                return served, served.batcher.submit(prompt_ids, params)
            except QueueFull as err:
                raise RequestProblem(429, f"server busy: {err}; retry later", kind="rate_limit_error",
                                     headers={"Retry-After": "1"}) from None
            except BatcherClosed:
                continue
        raise _unavailable("the served version changed twice during this request; retry")

    def _raise_if_failed(ticket: Ticket) -> None:
        if ticket.finish_reason == CANCELLED:
            raise _unavailable(ticket.cancel_reason or "generation was cancelled")
        if ticket.finish_reason == ERROR:
            raise RequestProblem(500, "generation failed", kind="server_error")

    def _stream(rid: str, created: int, started: float, req: ChatRequest, served: Served,
                ticket: Ticket, owner: str) -> Iterator[bytes]:
        # Runs after the view returned, outside the request context: no flask.g/request in here.
        label, gate, engine = served.label, moderator.gate(), served.engine
        blocked: ModerationResult | None = None
        finish: str | None = None  # stays None only if the client went away before the end
        text = ""

        def event(**kw: Any) -> bytes:
            return R.sse(R.chunk(rid=rid, created=created, model=label, **kw))

        try:
            yield event(delta={"role": "assistant", "content": ""})
            for _ in ticket.updates():
                if ticket.done:
                    break
                delta, blocked = gate.update(engine.stream_text(ticket), final=False)
                if delta:
                    yield event(delta={"content": delta})
                if blocked is not None:
                    ticket.cancel("moderation")
                    break
            if blocked is None and ticket.finish_reason in (CANCELLED, ERROR):
                problem = _unavailable(ticket.cancel_reason or "cancelled") \
                    if ticket.finish_reason == CANCELLED else RequestProblem(500, "generation failed",
                                                                             kind="server_error")
                finish = ticket.finish_reason
                yield R.sse(R.error_body(problem.message, kind=problem.kind))
                yield R.DONE
                return
            if blocked is None:
                text = engine.text_of(ticket)
                delta, blocked = gate.update(text, final=True)
                if delta:
                    yield event(delta={"content": delta})
            else:
                text = engine.text_of(ticket)
            if blocked is not None:
                finish = R.CONTENT_FILTER
                yield event(delta={"content": moderator.refusal}, finish_reason=finish, moderation=blocked)
            else:
                finish = ticket.finish_reason or "length"
                yield event(delta={}, finish_reason=finish, moderation=gate.last)
            if req.stream_options is not None and req.stream_options.include_usage:
                yield R.sse(R.usage_chunk(rid=rid, created=created, model=label, prompt_tokens=len(ticket.prompt_ids),
                                          completion_tokens=ticket.completion_tokens))
            yield R.DONE
        finally:
            if not ticket.done:  # a moderation block is cancelling already; anything else: the client left
                ticket.cancel("client disconnected")
            finish = finish or "disconnected"
            metrics.latency.labels("chat").observe(time.perf_counter() - started)
            if finish not in (ERROR, "disconnected", CANCELLED):
                _account(rid, started, served, ticket, blocked or gate.last, stream=True, finish=finish, text=text,
                         req=req, owner=owner)
            else:
                log.info("%s stream ended early (%s) model=%s completion_tokens=%d", rid, finish, label,
                         ticket.completion_tokens)

    def _account(rid: str, started: float, served: Served, ticket: Ticket, verdict: ModerationResult | None, *,
                 stream: bool, finish: str, text: str, req: ChatRequest, owner: str) -> None:
        metrics.tokens.labels("prompt").inc(len(ticket.prompt_ids))
        metrics.tokens.labels("completion").inc(ticket.completion_tokens)
        if ticket.started_at is not None:
            metrics.queue_wait.observe(ticket.started_at - ticket.queued_at)
        if ticket.first_token_at is not None:
            metrics.time_to_first_token.observe(ticket.first_token_at - ticket.queued_at)
        if verdict is not None:
            metrics.moderation_score.observe(verdict.score)
            if verdict.error:
                metrics.moderation_errors.inc()
            if verdict.flagged:
                metrics.moderation_blocks.labels("stream" if stream else "full").inc()
        total = time.perf_counter() - started
        log.info("%s model=%s stream=%s prompt_tokens=%d completion_tokens=%d finish=%s moderation=%s "
                 "score=%.3f queue=%.2fs total=%.2fs", rid, served.label, stream, len(ticket.prompt_ids),
                 ticket.completion_tokens, finish, "blocked" if verdict and verdict.flagged else "passed",
                 verdict.score if verdict else 0.0,
                 (ticket.started_at or ticket.queued_at) - ticket.queued_at, total)
        if service.log_prompts:  # opt-in only: prompts and replies may be personal data or harmful text
            log.info("%s prompt=%r reply=%r", rid, [m.model_dump() for m in req.messages], text)
        if rt.feedback is not None:  # opt-in too (service.feedback.enabled): the text the client received
            flagged = bool(verdict is not None and verdict.flagged)
            rt.feedback.record_completion(rid=rid, version=served.version,
                                          messages=[m.model_dump() for m in req.messages],
                                          reply=moderator.refusal if flagged else text, finish_reason=finish,
                                          moderated=flagged, owner=owner, prompt_tokens=len(ticket.prompt_ids),
                                          completion_tokens=ticket.completion_tokens)

    @app.errorhandler(RequestProblem)
    def request_problem(err: RequestProblem):
        return _error(err.status, err.message, param=err.param, kind=err.kind, headers=err.headers)

    @app.errorhandler(HTTPException)
    def http_error(err: HTTPException):
        kind = "invalid_request_error" if err.code == 413 else "http_error"
        message = err.description or err.name
        if err.code == 413:
            message = f"request body is over this service's limit of {service.max_body_bytes} bytes"
        return _error(err.code or 500, message, param="body" if err.code == 413 else None, kind=kind)

    @app.errorhandler(Exception)
    def internal_error(err: Exception):
        log.exception("internal error (%s)", type(err).__name__)
        return _error(500, "internal error", kind="server_error")

    if rt.feedback is not None:
        rt.feedback.register(app)  # POST /v1/feedback (serve/feedback.py)
    return app
