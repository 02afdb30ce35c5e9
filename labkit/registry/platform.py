"""Choosing one manifest from an index or manifest list when pulling.

The platform rules (names, variants, what runs where) are labkit.images.platform's;
the registry client only turns a miss into its own error type.
"""
from __future__ import annotations

from typing import Any

from ..errors import LabkitError
from ..images.platform import Platform, host_platform, matches, select
from .errors import PlatformNotFoundError

__all__ = ["Platform", "host_platform", "matches", "select_manifest"]


def select_manifest(index: dict[str, Any], platform: Platform | str | None = None) -> dict[str, Any]:
    """The descriptor in `index` for `platform` (default: this host); attestations are skipped."""
    try:
        return select(index.get("manifests") or [], platform)
    except LabkitError as err:
        raise PlatformNotFoundError(err.what, err.hint) from None
