"""The one exception type handlers raise; the protocol turns it into an error response."""

from __future__ import annotations

from typing import Literal

ErrorKind = Literal["invalid", "notfound", "libvirt", "internal"]


class AgentError(Exception):
    def __init__(self, kind: ErrorKind, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.kind: ErrorKind = kind
        self.message = message
        self.code = code

    def to_wire(self) -> dict[str, object]:
        return {"kind": self.kind, "message": self.message, "code": self.code}
