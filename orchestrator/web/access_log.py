"""One line per answered request, as cheap as a log line can be.

aiohttp's default access logger formats Apache's fields itself (a strftime per request, a dict
of ``extra`` fields) before the logging call; on the single-GET path that was about a tenth of the
API node's samples (py-spy, PostgreSQL).  This one hands the values to ``logging`` unformatted:
the record is formatted only if a handler emits it, and the time is the record's own.  It
writes to aiohttp's access logger (``aiohttp.access``), which aiohttp gives it.
"""

from __future__ import annotations

import logging

from aiohttp.abc import AbstractAccessLogger
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse


class AccessLog(AbstractAccessLogger):
    """``remote "METHOD path?query HTTP/x.y" status bytes ms request-id "user agent"``."""

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        version = request.version
        self.logger.info('%s "%s %s HTTP/%d.%d" %d %d %.1fms %s "%s"', request.remote, request.method,
                         request.path_qs, version.major, version.minor, response.status, response.body_length,
                         time * 1000, response.headers.get("X-REQUEST-ID", "-"), request.headers.get("User-Agent", "-"))
