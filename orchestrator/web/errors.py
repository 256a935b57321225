"""Rendering failures as CloudSigma's error list, and the middleware that does it.

CloudSigma clients only recognise errors as a JSON *list* of
``{"error_type", "error_message", "error_point"}`` objects (spec §8), so every
failure, including aiohttp's own 404/405 and unexpected exceptions, leaves
through :func:`error_middleware` in that shape.  The rules raise
:class:`~orchestrator.domain.errors.DomainError`; this module alone maps its kind to
an ``error_type`` and a status.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage
from aiohttp.web_protocol import RequestHandler, RequestPayloadError
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm.exc import ObjectDeletedError, StaleDataError

from orchestrator.domain.errors import DomainError, Kind

log = logging.getLogger(__name__)

# kind → (CloudSigma error_type, HTTP status)
ANSWERS: dict[Kind, tuple[str, int]] = {
    Kind.INVALID: ("validation", 400),
    Kind.NOT_FOUND: ("notexist", 404),
    Kind.FORBIDDEN: ("permission", 403),
    Kind.UNAUTHENTICATED: ("permission", 401),
    Kind.EXHAUSTED: ("concurrency", 503),
    Kind.NO_CAPACITY: ("backend", 503),
    Kind.UNREACHABLE: ("backend", 503),
    Kind.ALREADY_DONE: ("permission", 416),
    Kind.THROTTLED: ("permission", 429),
}


class HttpError(DomainError):
    """A refusal of the HTTP layer that carries headers (the Basic auth challenge)."""

    def __init__(self, kind: Kind, message: str, headers: dict[str, str]) -> None:
        super().__init__(kind, message)
        self.headers = headers


def respond(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """A JSON answer (every handler's, and the error lists below)."""
    return web.Response(status=status, body=msgspec.json.encode(data), content_type="application/json",
                        charset="utf-8", headers=headers)


def error_items(error: DomainError) -> list[dict[str, Any]]:
    return [{"error_type": ANSWERS[p.kind][0], "error_message": p.message, "error_point": p.point}
            for p in error.problems]


def error_response(error: DomainError) -> web.Response:
    return respond(error_items(error), ANSWERS[error.kind][1], getattr(error, "headers", None))


def _plain(status: int, error_type: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return respond([{"error_type": error_type, "error_message": message, "error_point": None}], status, headers)


_HTTP_TYPES = {401: "permission", 403: "permission", 404: "notexist", 405: "validation", 406: "validation"}


@web.middleware
async def error_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Outermost middleware: every failure becomes CloudSigma's error list."""
    try:
        return await handler(request)
    except DomainError as e:
        return error_response(e)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        headers = {k: v for k, v in e.headers.items() if k.lower() in ("allow", "www-authenticate", "retry-after")}
        if e.status == 413:
            return _plain(413, "validation", "Request body too large", headers)
        message = e.reason if e.status != 404 else "Resource not found"
        return _plain(e.status, _HTTP_TYPES.get(e.status, "validation"), message, headers)
    except (BadHttpMessage, RequestPayloadError):
        # A body that cannot be read as sent: Content-Encoding: gzip on plain bytes, a truncated chunk.
        response = _plain(400, "validation", "The request body cannot be read (bad Content-Encoding or framing)")
        response.force_close()  # the rest of the body cannot be read past the error: end the connection
        return response
    except (StaleDataError, ObjectDeletedError):
        # The row went away under this request (a DELETE committed first): as if it never existed.
        return _plain(404, "notexist", "Object does not exist (it was deleted meanwhile)")
    except IntegrityError:
        # A row this write refers to went away under it (a clone of a source deleted meanwhile).
        log.warning("integrity error on %s %s (a concurrent change?)", request.method, request.path, exc_info=True)
        return _plain(503, "concurrency", "A concurrent change conflicted with this request; retry")
    except Exception:
        log.exception("unexpected error on %s %s", request.method, request.path)
        return _plain(500, "backend", "Internal error")


def _protocol_error(self: RequestHandler, request: web.BaseRequest, status: int = 500,
                    exc: BaseException | None = None, message: str | None = None) -> web.StreamResponse:
    """aiohttp's answer to a request it could not even parse (a header over 8,190 bytes, an unknown
    Content-Encoding): the error list instead of plain text echoing the input, and a log line that
    names the failure without the offending bytes (they may hold the Basic credentials)."""
    log.info("unreadable request from %s: %s %s", request.remote, status, type(exc).__name__ if exc else "")
    if request.writer.output_size > 0:
        raise ConnectionError("Response is sent already, cannot send another response with the error message")
    if status >= 500:
        response = _plain(status, "backend", "Internal error")
    else:
        response = _plain(status, "validation", "Malformed request: a line or header too long, or unreadable framing")
    response.force_close()
    return response


def install_protocol_errors() -> None:
    """aiohttp offers no hook for its parser's errors; its one method that renders them is replaced."""
    RequestHandler.handle_error = _protocol_error  # type: ignore[method-assign]
