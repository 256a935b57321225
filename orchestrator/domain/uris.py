"""The API's resource URIs: the one place the ``/api/2.0/`` root is spelled."""

from __future__ import annotations

API_ROOT = "/api/2.0"


def uri(collection: str, uuid: str) -> str:
    return f"{API_ROOT}/{collection}/{uuid}/"


def link(collection: str, ident: str) -> dict[str, str]:
    """A reference as CloudSigma renders it: ``{"uuid": …, "resource_uri": …}``."""
    return {"uuid": ident, "resource_uri": uri(collection, ident)}
