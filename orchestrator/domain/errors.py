"""Why a rule refuses: the one error type of every layer below the API.

A rule names what kind of refusal it is and where in the request the fault lies (the
``error_point`` of CloudSigma's error list, spec §8); several refusals can travel together
(every field of a body is checked before answering).  The web layer
(``orchestrator/web/errors.py``) turns a kind into CloudSigma's ``error_type`` and an HTTP
status; nothing here knows HTTP.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Kind(StrEnum):
    INVALID = "invalid"              # the request itself is wrong
    NOT_FOUND = "not_found"          # no such object (or not the caller's)
    FORBIDDEN = "forbidden"          # not allowed in the object's current state
    UNAUTHENTICATED = "unauthenticated"
    EXHAUSTED = "exhausted"          # a shared pool ran out (addresses)
    NO_CAPACITY = "no_capacity"      # no host or pool can take it now
    UNREACHABLE = "unreachable"      # a host or guest did not answer
    ALREADY_DONE = "already_done"    # e.g. a chunk that was uploaded before
    THROTTLED = "throttled"          # too many failed attempts: wait (Retry-After)


@dataclass
class Problem:
    kind: Kind
    message: str
    point: str | None = None


class DomainError(Exception):
    """One or more refusals; the first one's kind decides the answer's status."""

    def __init__(self, kind: Kind, message: str, point: str | None = None) -> None:
        super().__init__(message)
        self.problems = [Problem(kind, message, point)]

    @property
    def kind(self) -> Kind:
        return self.problems[0].kind

    @classmethod
    def collect(cls, errors: list[DomainError]) -> DomainError:
        first, *rest = errors
        for other in rest:
            first.problems.extend(other.problems)
        return first

    def prefixed(self, prefix: str) -> DomainError:
        """The same refusals with ``prefix.`` before each point (bulk requests: ``objects.N``)."""
        for problem in self.problems:
            problem.point = f"{prefix}.{problem.point}" if problem.point else prefix
        return self


def invalid(message: str, point: str | None = None) -> DomainError:
    return DomainError(Kind.INVALID, message, point)


def notexist(what: str = "Object", point: str | None = None) -> DomainError:
    return DomainError(Kind.NOT_FOUND, f"{what} does not exist", point)


def forbidden(message: str, point: str | None = None) -> DomainError:
    return DomainError(Kind.FORBIDDEN, message, point)


def no_capacity(message: str) -> DomainError:
    return DomainError(Kind.NO_CAPACITY, message)


def unreachable(message: str) -> DomainError:
    return DomainError(Kind.UNREACHABLE, message)
