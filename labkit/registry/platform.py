"""Platforms (os/architecture/variant) and choosing one manifest from an index.

A multi-arch image's tag points at an *index* (OCI) or *manifest list* (Docker):
one manifest per platform. The client picks the one for the host, as docker
does: os.uname().machine x86_64 → linux/amd64, aarch64 → linux/arm64/v8.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

from .errors import PlatformNotFoundError

_MACHINE = {
    "x86_64": ("amd64", ""), "amd64": ("amd64", ""),
    "aarch64": ("arm64", "v8"), "arm64": ("arm64", "v8"), "armv8l": ("arm64", "v8"),
    "armv7l": ("arm", "v7"), "armv6l": ("arm", "v6"), "armv5tel": ("arm", "v5"),
    "i386": ("386", ""), "i486": ("386", ""), "i586": ("386", ""), "i686": ("386", ""),
    "ppc64le": ("ppc64le", ""), "s390x": ("s390x", ""), "riscv64": ("riscv64", ""),
    "mips64": ("mips64", ""), "loongarch64": ("loong64", ""),
}


@dataclasses.dataclass(frozen=True)
class Platform:
    os: str = "linux"
    architecture: str = "amd64"
    variant: str = ""

    @classmethod
    def parse(cls, text: str) -> "Platform":
        """'linux/arm64/v8', 'linux/amd64', 'arm64' (os defaults to linux)."""
        parts = text.strip().split("/")
        if len(parts) == 1:
            parts = ["linux", *parts]
        if len(parts) not in (2, 3) or not all(parts):
            raise PlatformNotFoundError(f"invalid platform {text!r}",
                                        "write it as os/arch[/variant], e.g. linux/arm64/v8")
        return cls(parts[0], parts[1], parts[2] if len(parts) == 3 else "").normalized()

    @classmethod
    def from_descriptor(cls, descriptor: dict[str, Any]) -> "Platform | None":
        p = descriptor.get("platform")
        if not isinstance(p, dict):
            return None
        return cls(p.get("os", ""), p.get("architecture", ""), p.get("variant", "") or "")

    def normalized(self) -> "Platform":
        arch, variant = self.architecture, self.variant
        if arch in _MACHINE and arch not in ("arm64", "amd64"):
            arch, default_variant = _MACHINE[arch]
            variant = variant or default_variant
        if arch == "arm64" and variant in ("", "8"):
            variant = "v8"
        if arch == "arm" and variant in ("", "7"):
            variant = "v7"
        if arch == "amd64" and variant == "v1":
            variant = ""
        return Platform(self.os.lower(), arch, variant)

    def __str__(self) -> str:
        return f"{self.os}/{self.architecture}" + (f"/{self.variant}" if self.variant else "")


def host_platform(machine: str | None = None) -> Platform:
    """The host's platform from os.uname(): x86_64 → linux/amd64, aarch64 → linux/arm64/v8."""
    uname = os.uname()
    machine = machine or uname.machine
    arch, variant = _MACHINE.get(machine, (machine, ""))
    return Platform(uname.sysname.lower() or "linux", arch, variant)


def matches(wanted: Platform, candidate: Platform) -> bool:
    w, c = wanted.normalized(), candidate.normalized()
    return w.os == c.os and w.architecture == c.architecture and (not w.variant or w.variant == c.variant)


def select_manifest(index: dict[str, Any], platform: Platform | str | None = None) -> dict[str, Any]:
    """The descriptor in an index / manifest list for `platform` (default: the host's).

    Entries without a platform, or for os "unknown" (build attestations), are not
    images to run and are skipped. Raises PlatformNotFoundError listing what there is.
    """
    wanted = host_platform() if platform is None else (
        Platform.parse(platform) if isinstance(platform, str) else platform)
    available = []
    for descriptor in index.get("manifests") or []:
        candidate = Platform.from_descriptor(descriptor)
        if candidate is None or candidate.os == "unknown":
            continue
        available.append(candidate)
        if matches(wanted, candidate):
            return descriptor
    listed = ", ".join(map(str, available)) or "none"
    raise PlatformNotFoundError(f"the image has no manifest for {wanted}; it has: {listed}",
                                "pass platform='os/arch[/variant]' for one of those, or use an image built for "
                                "this machine")
