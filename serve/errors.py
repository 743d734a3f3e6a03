"""The error every route raises for a request it cannot serve (serve/app.py turns it into OpenAI's error body).

Its own module so that route modules (serve/feedback.py) and the app share it without importing each other.
"""

from __future__ import annotations

from serve.responses import INVALID_REQUEST, SERVER_ERROR


class RequestProblem(Exception):
    def __init__(self, status: int, message: str, *, param: str | None = None, kind: str = INVALID_REQUEST,
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.kind, self.code = status, message, param, kind, code
        self.headers = headers or {}


def unavailable(reason: str) -> RequestProblem:
    """503: nothing approved is served right now (a revocation, a swap in progress, a store outage at start)."""
    return RequestProblem(503, f"no model is being served: {reason}", kind=SERVER_ERROR, code="service_unavailable",
                          headers={"Retry-After": "30"})
