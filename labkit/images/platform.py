"""Platforms (os/architecture/variant) and choosing one manifest from an image index.

A multi-arch image is an index whose entries each name a platform. The names
come from Go (GOOS/GOARCH), not from `uname -m`: x86_64 is "amd64", aarch64 is
"arm64". Variants refine an architecture: arm64 is always "v8" (so "" and "v8"
mean the same), and a CPU that runs arm/v7 also runs arm/v6 and arm/v5 code,
so those are acceptable, worse, matches — the same rules containerd applies.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Iterable

from ..errors import LabkitError

# uname -m / distribution names -> (GOARCH, variant)
_ARCH_ALIASES: dict[str, tuple[str, str]] = {
    "x86_64": ("amd64", ""), "x86-64": ("amd64", ""), "amd64": ("amd64", ""),
    "aarch64": ("arm64", ""), "arm64": ("arm64", ""), "armv8l": ("arm64", ""),
    "armhf": ("arm", "v7"), "armel": ("arm", "v6"), "armv7l": ("arm", "v7"), "armv6l": ("arm", "v6"),
    "armv5tel": ("arm", "v5"), "i386": ("386", ""), "i486": ("386", ""), "i586": ("386", ""),
    "i686": ("386", ""), "386": ("386", ""), "loongarch64": ("loong64", ""),
}
# Older variants a CPU of the given variant also runs, best first.
_COMPATIBLE: dict[str, tuple[str, ...]] = {
    "arm/v8": ("v8", "v7", "v6", "v5"), "arm/v7": ("v7", "v6", "v5"), "arm/v6": ("v6", "v5"), "arm/v5": ("v5",),
    "amd64/v4": ("v4", "v3", "v2", "v1"), "amd64/v3": ("v3", "v2", "v1"), "amd64/v2": ("v2", "v1"),
    "amd64/v1": ("v1",),
}


@dataclasses.dataclass(frozen=True)
class Platform:
    os: str = "linux"
    architecture: str = "amd64"
    variant: str = ""

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)

    @classmethod
    def parse(cls, text: str) -> "Platform":
        """'linux/arm64/v8', 'linux/amd64', 'arm64' (os defaults to linux), 'aarch64'."""
        parts = text.strip().lower().split("/")
        if not 1 <= len(parts) <= 3 or not all(parts):
            raise LabkitError(f"cannot parse platform {text!r}", "write it as os/arch[/variant], e.g. linux/arm64/v8")
        if len(parts) == 1:
            parts = ["linux", parts[0]]
        return normalize(cls(*parts))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Platform":
        return cls(data.get("os", ""), data.get("architecture", ""), data.get("variant", "") or "")

    @classmethod
    def from_descriptor(cls, descriptor: dict[str, Any]) -> "Platform | None":
        """The platform an index entry names, or None (e.g. an entry that is no image)."""
        data = descriptor.get("platform")
        return cls.from_dict(data) if isinstance(data, dict) else None

    def normalized(self) -> "Platform":
        return normalize(self)

    def to_dict(self) -> dict[str, str]:
        out = {"architecture": self.architecture, "os": self.os}
        if self.variant:
            out["variant"] = self.variant
        return out


def normalize(p: Platform) -> Platform:
    """Canonical names: aarch64 -> arm64 (variant v8), armhf -> arm/v7, x86_64 -> amd64."""
    arch, implied = _ARCH_ALIASES.get(p.architecture.lower(), (p.architecture.lower(), ""))
    variant = (p.variant or implied).lower()
    if arch == "arm64" and variant in ("", "8"):
        variant = "v8"  # arm64 has only v8 (and later); an absent variant means v8
    if arch == "arm" and variant.isdigit():
        variant = "v" + variant
    if arch == "arm" and not variant:
        variant = "v7"
    if arch == "amd64" and variant == "v1":
        variant = ""  # v1 is the amd64 baseline: plain "amd64"
    return Platform(p.os.lower(), arch, variant)


def host_platform(machine: str | None = None) -> Platform:
    """The platform of this machine (or of a `uname -m` name): x86_64 -> linux/amd64."""
    return normalize(Platform("linux", machine or os.uname().machine))


def candidates(wanted: Platform) -> list[Platform]:
    """Every platform an image may have to run on `wanted`, best first."""
    w = normalize(wanted)
    older = _COMPATIBLE.get(f"{w.architecture}/{w.variant or 'v1'}" if w.architecture == "amd64"
                            else f"{w.architecture}/{w.variant}")
    if not older:
        return [w]
    found = [Platform(w.os, w.architecture, v) for v in older]
    if w.architecture == "amd64":  # plain "amd64" is the v1 baseline
        found.insert(0 if not w.variant else len(found), Platform(w.os, "amd64", ""))
    return found


def matches(wanted: Platform, offered: Platform) -> bool:
    """Can a machine of platform `wanted` run an image built for `offered`?"""
    return normalize(offered) in candidates(wanted)


def rank(wanted: Platform, offered: Platform) -> int | None:
    """0 for an exact match, higher for older compatible variants, None if unusable."""
    found = candidates(wanted)
    o = normalize(offered)
    return found.index(o) if o in found else None


def select(entries: Iterable[dict[str, Any]], wanted: Platform | str | None = None) -> dict[str, Any]:
    """The index entry (a descriptor with "platform") best for `wanted` (default: this host)."""
    want = Platform.parse(wanted) if isinstance(wanted, str) else (wanted or host_platform())
    entries = list(entries)
    scored = []
    entries = [e for e in entries if isinstance(e.get("platform"), dict)
               and e["platform"].get("os") != "unknown"]  # attestations etc. are not images to run
    for position, entry in enumerate(entries):
        score = rank(want, Platform.from_dict(entry["platform"]))
        if score is not None:
            scored.append((score, position, entry))
    if not scored:
        offered = ", ".join(str(normalize(Platform.from_dict(e["platform"]))) for e in entries)
        raise LabkitError(f"the image has no variant for {want} (it offers: {offered or 'none'})",
                          "pick one of the offered platforms explicitly, e.g. platform='linux/amd64'")
    return min(scored, key=lambda item: item[:2])[2]
