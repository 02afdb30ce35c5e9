"""Registry errors: the distribution spec's JSON error codes and HTTP statuses, each
turned into a LabkitError that says what failed and what to do.

A registry answers a failed request with a status and a body like
    {"errors": [{"code": "MANIFEST_UNKNOWN", "message": "manifest unknown", "detail": ...}]}
`from_response()` picks the class for the first code (or for the status when
the body has none).
"""
from __future__ import annotations

import email.utils
import json
import time
from typing import Any, Mapping

from ..errors import LabkitError
from ..images.store import DigestError


class RegistryError(LabkitError):
    """A registry refused or failed a request."""

    code = ""

    def __init__(self, what: str, hint: str = "", *, status: int | None = None,
                 code: str | None = None, detail: Any = None, retry_after: float | None = None) -> None:
        super().__init__(what, hint)
        self.status = status
        if code:
            self.code = code
        self.detail = detail
        self.retry_after = retry_after


class ReferenceError_(LabkitError):
    """An image reference cannot be parsed (named with '_' so as not to shadow the builtin)."""


class InsecureRegistryError(RegistryError):
    """Plain HTTP to a registry that is neither loopback nor listed as insecure."""


class RegistryUnreachableError(RegistryError):
    """No connection: nothing listens there, or the network is down."""


class UnauthorizedError(RegistryError):
    code = "UNAUTHORIZED"


class DeniedError(RegistryError):
    code = "DENIED"


class NameUnknownError(RegistryError):
    code = "NAME_UNKNOWN"


class ManifestUnknownError(RegistryError):
    code = "MANIFEST_UNKNOWN"


class BlobUnknownError(RegistryError):
    code = "BLOB_UNKNOWN"


class DigestInvalidError(RegistryError):
    code = "DIGEST_INVALID"


class TooManyRequestsError(RegistryError):
    code = "TOOMANYREQUESTS"


class ManifestError(RegistryError):
    """A manifest labkit cannot use (unknown media type, too large, malformed)."""


class PlatformNotFoundError(RegistryError):
    """An index lists no manifest for the wanted platform."""


class DigestMismatchError(RegistryError, DigestError):
    """Content received from a registry does not match its digest or size; nothing was kept."""


_HINTS = {
    "UNAUTHORIZED": "log in: pass credentials=(user, password), or add them to ~/.docker/config.json "
                    "(`docker login`); a token server may also refuse the scope asked for",
    "DENIED": "these credentials are valid but lack permission for this repository or action "
              "(push needs write access); use an account that has it",
    "NAME_UNKNOWN": "check the repository name and registry; official Docker Hub images live under library/",
    "NAME_INVALID": "repository names are lowercase path components, e.g. demo/hello",
    "MANIFEST_UNKNOWN": "check the tag or digest (list tags with RegistryClient.tags(repo)); push it first",
    "MANIFEST_INVALID": "the registry rejected the manifest's JSON or media type; check Content-Type and body",
    "MANIFEST_BLOB_UNKNOWN": "push the config and every layer before the manifest (push() does this in order)",
    "MANIFEST_UNVERIFIED": "the manifest's signature did not verify; schema1 manifests are not supported",
    "BLOB_UNKNOWN": "push the blob first; or it was deleted/garbage-collected on the registry",
    "BLOB_UPLOAD_UNKNOWN": "the upload session expired or was cancelled; start the upload again",
    "BLOB_UPLOAD_INVALID": "chunks must be sent in order with matching Content-Range; start the upload again",
    "DIGEST_INVALID": "the bytes sent do not match the digest given; re-push from a store whose blobs verify",
    "SIZE_INVALID": "Content-Length does not match the content sent; retry the upload",
    "TAG_INVALID": "a tag is up to 128 letters, digits, '_', '.', '-'",
    "UNSUPPORTED": "the registry does not support this operation (e.g. deletes are disabled)",
    "TOOMANYREQUESTS": "the registry rate-limits you; wait before retrying, or log in for a higher limit",
}

_BY_CODE: dict[str, type[RegistryError]] = {
    "UNAUTHORIZED": UnauthorizedError, "DENIED": DeniedError, "NAME_UNKNOWN": NameUnknownError,
    "MANIFEST_UNKNOWN": ManifestUnknownError, "BLOB_UNKNOWN": BlobUnknownError,
    "DIGEST_INVALID": DigestInvalidError, "TOOMANYREQUESTS": TooManyRequestsError,
}
_BY_STATUS: dict[int, tuple[type[RegistryError], str]] = {
    401: (UnauthorizedError, "UNAUTHORIZED"), 403: (DeniedError, "DENIED"),
    429: (TooManyRequestsError, "TOOMANYREQUESTS"),
}


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Retry-After is either seconds or an HTTP date; returns seconds to wait."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


def parse_error_body(body: bytes) -> list[dict[str, Any]]:
    try:
        doc = json.loads(body.decode("utf-8", "replace")) if body else {}
    except ValueError:
        return []
    errors = doc.get("errors") if isinstance(doc, dict) else None
    return [e for e in errors if isinstance(e, dict)] if isinstance(errors, list) else []


def from_response(status: int, headers: Mapping[str, str], body: bytes, what: str) -> RegistryError:
    """The LabkitError for a failed registry response. `what` names the request."""
    errors = parse_error_body(body)
    first = errors[0] if errors else {}
    code = str(first.get("code", "")).upper()
    cls = _BY_CODE.get(code)
    if cls is None and status in _BY_STATUS:
        cls, default_code = _BY_STATUS[status]
        code = code or default_code
    if cls is None and status == 404:
        cls = NameUnknownError if code == "NAME_UNKNOWN" else RegistryError
        code = code or "NOT_FOUND"
    cls = cls or RegistryError
    retry_after = parse_retry_after(headers.get("Retry-After"))
    message = first.get("message") or (body[:200].decode("utf-8", "replace").strip() if not errors else "")
    detail = first.get("detail")
    text = f"{what}: HTTP {status}" + (f" {code}" if code else "") + (f": {message}" if message else "")
    hint = _HINTS.get(code, "")
    if status == 404 and not hint:
        hint = "the registry does not know this name, tag or digest; check the reference"
    if cls is TooManyRequestsError and retry_after is not None:
        hint = f"rate limited: wait {retry_after:.0f} s (Retry-After) before retrying, or log in for a higher limit"
    if status >= 500 and not hint:
        hint = "the registry failed internally; look at its log and retry"
    return cls(text, hint, status=status, code=code or None, detail=detail, retry_after=retry_after)
