"""The Flask app: an OpenAI-style API over the one verified, approved model version in the slot.

Endpoints: ``POST /v1/chat/completions`` (JSON or server-sent events), ``GET /v1/models``,
``GET /v1/models/{model_id}``, ``/healthz``
(liveness), ``/readyz`` (503 while nothing valid is served), ``/metrics`` (Prometheus), ``/dashboard`` (the
latest report), ``/openapi.json`` (serve/openapi.py). ``/v1/*`` and ``/dashboard`` need a bearer key when keys are configured.

Prompts and replies are never logged unless ``service.log_prompts`` is on (they may hold user data or harmful
text); by default only ids, token counts, moderation scores and timings are.
"""

from __future__ import annotations

import hashlib
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
from serve.constrain import ConstraintError, Grammar
from serve.engine import CANCELLED, ERROR, Engine, SamplingParams, Ticket
from serve.errors import RequestProblem, unavailable
from serve.metrics import Metrics
from serve.moderation import ModerationResult, Moderator
from serve.openapi import MODEL_PATH, OPENAPI_PATH, openapi_document
from serve.schemas import ChatRequest, request_error
from serve.slot import ModelSlot, Served

log = logging.getLogger("harmgate.serve")
PROTECTED = ("/v1/", "/dashboard")
ENDPOINTS = {"/v1/chat/completions": "chat", "/v1/feedback": "feedback",
             "/v1/models": "models", "/v1/models/<path:model_id>": "model", "/healthz": "healthz", "/readyz": "readyz",
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


def _error(status: int, message: str, *, param: str | None = None, kind: str = R.INVALID_REQUEST,
           code: str | None = None, headers: dict[str, str] | None = None):
    return jsonify(R.error_body(message, param=param, kind=kind, code=code)), status, headers or {}


def fingerprint(served: Served) -> str:
    """OpenAI's ``system_fingerprint``: here the served version's manifest digest (what decides the replies)."""
    return f"fp_{served.model.manifest_sha256[:12]}"


def end_user(req: ChatRequest) -> str | None:
    """``safety_identifier`` (or the older ``user``) as a short hash: enough to trace abuse, no raw id logged."""
    who = req.safety_identifier or req.user
    return hashlib.sha256(who.encode()).hexdigest()[:12] if who else None


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
        header = request.headers.get("Authorization")
        if rt.keys.enabled and request.path.startswith(PROTECTED) and not rt.keys.check(header):
            said = "incorrect API key provided" if header and header.startswith("Bearer ") and header[7:].strip() \
                else "no API key provided"
            # OpenAI's shape for both: invalid_request_error with code invalid_api_key (the client raises
            # AuthenticationError on the 401).
            return _error(401, f"{said}: send 'Authorization: Bearer <key>'", code="invalid_api_key",
                          headers={"WWW-Authenticate": 'Bearer realm="harmgate"'})
        return None

    @app.after_request
    def _count(resp: Response) -> Response:
        endpoint = ENDPOINTS.get(request.url_rule.rule if request.url_rule else request.path, "other")
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

    def _card(served: Served) -> dict[str, Any]:
        m = served.model
        return R.model_card(
            model_id=served.label, created=int(served.loaded_at),
            name=m.name, version=m.version, manifest_sha256=m.manifest_sha256,
            base_model=m.manifest.get("base_model"), published_at=m.manifest.get("created_at"),
            gate=gate_summary(m.manifest), moderation={"scorer": moderator.name, "threshold": moderator.threshold},
            limits={"max_prompt_tokens": service.max_prompt_tokens, "max_tokens": service.max_new_tokens})

    def _served() -> Served:
        served, reason = slot.get()
        if served is None:
            raise unavailable(reason)
        return served

    @app.get("/v1/models")
    def models():
        return jsonify({"object": "list", "data": [_card(_served())]})

    @app.get(MODEL_PATH)
    def model(model_id: str):
        served = _served()
        if model_id not in (served.label, served.model.name):
            raise _model_not_found(model_id, served)
        return jsonify(_card(served))

    def _model_not_found(model_id: str, served: Served) -> RequestProblem:
        return RequestProblem(404, f"the model {model_id!r} does not exist here; this service serves "
                                   f"{served.label}", param="model", code="model_not_found")

    @app.get("/dashboard")
    def dashboard():
        served, _ = slot.get()
        name, version = (served.model.name, served.version) if served else (None, None)
        report, tried = rt.dashboard.find(name, version)
        if report is None:
            return _error(404, f"no report to show; looked in: {'; '.join(tried)}. Write one with `harmgate report "
                               f"RUN_DIR` and set service.dashboard_path, or publish the run (it attaches its report)",
                          kind="not_found")  # not an OpenAI route: its own type
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
        engine = served.engine
        gen = engine.result(ticket)
        verdict = moderator.check(gen.text)
        entries = None
        if req.logprobs and not verdict.flagged:
            entries, _ = _logprob_entries(engine, ticket, req, 0, len(gen.text), final=True)
            verdict = _check_alternatives(entries, verdict)
        if verdict.flagged:  # nothing of the reply leaves, its log-probabilities included
            content, finish, entries = moderator.refusal, R.CONTENT_FILTER, None
        else:
            content, finish = gen.text, gen.finish_reason
        _account(rid, started, served, ticket, verdict, stream=False, finish=finish, text=gen.text, req=req,
                 owner=owner)
        return jsonify(R.completion(rid=rid, created=created, model=served.label, fingerprint=fingerprint(served),
                                    content=content, finish_reason=finish, moderation=verdict,
                                    prompt_tokens=gen.prompt_tokens, completion_tokens=gen.completion_tokens,
                                    logprobs=entries))

    def _parse(req: Any) -> ChatRequest:
        body = req.get_json(force=True, silent=True)
        if body is None:
            raise RequestProblem(400, "request body is not valid JSON", param="body", code="invalid_json")
        if not isinstance(body, dict):
            raise RequestProblem(400, "request body must be a JSON object", param="body", code="invalid_value")
        try:
            return ChatRequest.model_validate(body)
        except ValidationError as err:
            problem = request_error(err)
            raise RequestProblem(400, problem.text, param=problem.param, code=problem.code) from None

    def _sampling(req: ChatRequest, engine: Engine) -> SamplingParams:
        field, limit = req.token_limit
        if limit is not None and limit > service.max_new_tokens:
            raise RequestProblem(400, f"{field} is {limit}, over this service's limit of {service.max_new_tokens}",
                                 param=field, code="invalid_value")
        bias = tuple((int(k), float(v)) for k, v in (req.logit_bias or {}).items())
        for token, _ in bias:
            if token >= engine.vocab_size:
                raise RequestProblem(400, f"logit_bias: token id {token} is outside the model's vocabulary "
                                          f"(0-{engine.vocab_size - 1})", param="logit_bias", code="invalid_value")
        return SamplingParams(
            max_new_tokens=limit or service.max_new_tokens, temperature=req.temperature or 0.0,
            top_p=req.top_p if req.top_p is not None else 1.0, stop=tuple(req.stop or ()), seed=req.seed,
            logprobs=bool(req.logprobs), top_logprobs=req.top_logprobs or 0,
            frequency_penalty=req.frequency_penalty or 0.0, presence_penalty=req.presence_penalty or 0.0,
            logit_bias=bias, grammar=_grammar(req, engine))

    def _grammar(req: ChatRequest, engine: Engine) -> Grammar | None:
        fmt = req.response_format
        if fmt is None or fmt.type == "text":
            return None
        schema = fmt.json_schema.schema_ if fmt.json_schema is not None else None
        param = "response_format.json_schema.schema" if fmt.type == "json_schema" else "response_format"
        try:
            return engine.grammars.compile(fmt.type, schema)
        except ConstraintError as err:
            raise RequestProblem(400, f"{param}: {err}", param=param, code="invalid_value") from None

    def _start(req: ChatRequest) -> tuple[Served, Ticket]:
        for _ in range(2):  # a second try only if a hot swap closed the version taken a moment ago
            served = _served()
            if req.model not in (None, served.model.name, served.label):
                raise _model_not_found(req.model, served)
            params = _sampling(req, served.engine)
            try:
                prompt_ids = served.engine.encode_chat(req.template_messages())
            except TemplateError as err:  # e.g. a template that wants alternating user/assistant turns
                raise RequestProblem(400, f"messages: the model's chat template rejected them: {err}",
                                     param="messages", code="invalid_value") from None
            if len(prompt_ids) > service.max_prompt_tokens:
                raise RequestProblem(400, f"messages: the prompt is {len(prompt_ids)} tokens, over this service's "
                                          f"limit of {service.max_prompt_tokens}", param="messages",
                                     code="context_length_exceeded")
            try:
                return served, served.batcher.submit(prompt_ids, params)
            except QueueFull as err:
                raise RequestProblem(429, f"server busy: {err}; retry later", kind="requests",
                                     code="rate_limit_exceeded", headers={"Retry-After": "1"}) from None
            except BatcherClosed:
                continue
        raise unavailable("the served version changed twice during this request; retry")

    def _raise_if_failed(ticket: Ticket) -> None:
        if ticket.finish_reason == CANCELLED:
            raise unavailable(ticket.cancel_reason or "generation was cancelled")
        if ticket.finish_reason == ERROR:
            raise RequestProblem(500, "generation failed", kind=R.SERVER_ERROR)

    def _logprob_entries(engine: Engine, ticket: Ticket, req: ChatRequest, first: int, chars: int, *,
                         final: bool) -> tuple[list[dict[str, Any]], int]:
        """Entries for the tokens from ``first`` whose text lies within the first ``chars`` characters of the
        reply (moderated text only); with ``final``, every token that starts before ``chars`` (a stop string
        may cut the last one). Returns (entries, index of the next token to send)."""
        count = min(len(ticket.logprobs), len(ticket.tokens))
        pieces = engine.token_pieces(ticket, count)
        entries, end, i = [], sum(len(p) for p in pieces[:first]), first
        while i < count:
            start, end = end, end + len(pieces[i])
            if (start >= chars) if final else (end > chars):
                break
            lp = ticket.logprobs[i]
            entries.append(R.token_logprob(engine.token_bytes(lp.token), lp.logprob,
                                           [(engine.token_bytes(t), v) for t, v in lp.top]))
            i += 1
        return entries, i

    def _alternatives(entries: list[dict[str, Any]]) -> str:
        """top_logprobs sends tokens the model did not choose: they are model text too, and pass moderation."""
        return " ".join(t["token"] for e in entries for t in e.get("top_logprobs") or [])

    def _check_alternatives(entries: list[dict[str, Any]], verdict: ModerationResult) -> ModerationResult:
        if verdict.flagged or not _alternatives(entries).strip():
            return verdict
        alt = moderator.check(_alternatives(entries))
        return alt if alt.flagged else verdict

    def _stream(rid: str, created: int, started: float, req: ChatRequest, served: Served,
                ticket: Ticket, owner: str) -> Iterator[bytes]:
        # Runs after the view returned, outside the request context: no flask.g/request in here.
        label, gate, engine = served.label, moderator.gate(), served.engine
        blocked: ModerationResult | None = None
        finish: str | None = None  # stays None only if the client went away before the end
        text = ""
        sent_tokens = 0
        options = req.stream_options
        with_usage = bool(options and options.include_usage)
        obfuscate = not (options and options.include_obfuscation is False)  # OpenAI's default: on

        def event(**kw: Any) -> bytes:
            return R.sse(R.chunk(rid=rid, created=created, model=label, fingerprint=fingerprint(served),
                                 with_usage=with_usage, obfuscate=obfuscate and "content" in kw["delta"], **kw))

        def release(text_now: str, final: bool) -> tuple[bytes | None, ModerationResult | None]:
            # The next moderated piece (and its tokens' log-probabilities), or the result that blocks the reply.
            nonlocal sent_tokens
            delta, verdict = gate.update(text_now, final=final)
            if verdict is not None or not (delta or (final and req.logprobs)):
                return None, verdict
            entries = None
            if req.logprobs:
                entries, sent_tokens = _logprob_entries(engine, ticket, req, sent_tokens, gate.released,
                                                        final=final)
                alt = gate.check_extra(_alternatives(entries))
                if alt is not None:
                    return None, alt
                if not delta and not entries:
                    return None, None
            return event(delta={"content": delta}, logprobs=entries), None

        try:
            yield event(delta={"role": "assistant", "content": "", "refusal": None})
            for _ in ticket.updates():
                if ticket.done:
                    break
                out, blocked = release(engine.stream_text(ticket), final=False)
                if out:
                    yield out
                if blocked is not None:
                    ticket.cancel("moderation")
                    break
            if blocked is None and ticket.finish_reason in (CANCELLED, ERROR):
                problem = unavailable(ticket.cancel_reason or "cancelled") \
                    if ticket.finish_reason == CANCELLED else RequestProblem(500, "generation failed",
                                                                             kind=R.SERVER_ERROR)
                finish = ticket.finish_reason
                yield R.sse(R.error_body(problem.message, kind=problem.kind, code=problem.code))
                yield R.DONE
                return
            text = engine.text_of(ticket)
            if blocked is None:
                out, blocked = release(text, final=True)
                if out:
                    yield out
            if blocked is not None:
                finish = R.CONTENT_FILTER
                yield event(delta={"content": moderator.refusal, "refusal": moderator.refusal}, finish_reason=finish,
                            moderation=blocked)
            else:
                finish = ticket.finish_reason or "length"
                yield event(delta={}, finish_reason=finish, moderation=gate.last)
            if with_usage:
                yield R.sse(R.usage_chunk(rid=rid, created=created, model=label, fingerprint=fingerprint(served),
                                          prompt_tokens=len(ticket.prompt_ids),
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
                 "score=%.3f queue=%.2fs total=%.2fs%s", rid, served.label, stream, len(ticket.prompt_ids),
                 ticket.completion_tokens, finish, "blocked" if verdict and verdict.flagged else "passed",
                 verdict.score if verdict else 0.0,
                 (ticket.started_at or ticket.queued_at) - ticket.queued_at, total,
                 f" user={end_user(req)}" if end_user(req) else "")
        if service.log_prompts:  # opt-in only: prompts and replies may be personal data or harmful text
            log.info("%s prompt=%r reply=%r", rid, req.template_messages(), text)
        if rt.feedback is not None:  # opt-in too (service.feedback.enabled): the text the client received
            flagged = bool(verdict is not None and verdict.flagged)
            rt.feedback.record_completion(rid=rid, version=served.version,
                                          messages=req.template_messages(),
                                          reply=moderator.refusal if flagged else text, finish_reason=finish,
                                          moderated=flagged, owner=owner, prompt_tokens=len(ticket.prompt_ids),
                                          completion_tokens=ticket.completion_tokens)

    @app.errorhandler(RequestProblem)
    def request_problem(err: RequestProblem):
        return _error(err.status, err.message, param=err.param, kind=err.kind, code=err.code, headers=err.headers)

    @app.errorhandler(HTTPException)
    def http_error(err: HTTPException):
        if err.code == 413:
            return _error(413, f"request body is over this service's limit of {service.max_body_bytes} bytes",
                          param="body", code="request_too_large")
        if err.code in (404, 405):  # OpenAI's wording for a route that does not exist
            return _error(err.code, f"invalid URL ({request.method} {request.path}): {err.description or err.name}",
                          headers=dict(err.get_headers()) if err.code == 405 else None)
        return _error(err.code or 500, err.description or err.name,
                      kind=R.SERVER_ERROR if (err.code or 500) >= 500 else R.INVALID_REQUEST)

    @app.errorhandler(Exception)
    def internal_error(err: Exception):
        log.exception("internal error (%s)", type(err).__name__)
        return _error(500, "internal error", kind=R.SERVER_ERROR)

    if rt.feedback is not None:
        rt.feedback.register(app)  # POST /v1/feedback (serve/feedback.py)
    return app
