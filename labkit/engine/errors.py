"""Engine errors a daemon maps to HTTP status codes (moby's errdefs/httpstatus).

They join the one `LabkitError` family, so the CLI prints them like any other
labkit error, and the daemon answers with `http_status` and the same text.
"""
from __future__ import annotations

from labkit.errors import LabkitError


class EngineError(LabkitError):
    """Base of the engine's errors; anything else a daemon reports is a 500."""

    http_status = 500


class NotFound(EngineError):
    """The object (container, image, volume…) does not exist."""

    http_status = 404


class Conflict(EngineError):
    """The request is valid but impossible in the object's current state."""

    http_status = 409


class Invalid(EngineError):
    """The request itself is malformed: bad name, bad flag value, bad option."""

    http_status = 400


class NotModified(EngineError):
    """Already in the wanted state (start a running container): HTTP 304.

    Docker reports it as an error so callers stop early; the CLI treats it
    as success.
    """

    http_status = 304


def http_status(exc: BaseException) -> int:
    """The HTTP status a daemon answers for `exc` (500 for anything unexpected)."""
    return getattr(exc, "http_status", 500) if isinstance(exc, EngineError) else 500
