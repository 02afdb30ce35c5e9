"""Image references: `[registry/]repository[:tag][@digest]`, normalized as docker does.

    busybox                      -> docker.io/library/busybox:latest
    alice/app:1.0                -> docker.io/alice/app:1.0
    127.0.0.1:5000/demo/hello    -> 127.0.0.1:5000/demo/hello:latest
    quay.io/x/y@sha256:<64 hex>  -> pinned by digest (the tag, if any, is only a label)

The first component is a registry host when it contains "." or ":" or is
"localhost"; otherwise the reference is on Docker Hub, whose API lives at
registry-1.docker.io and whose one-component names get the "library/" prefix.
"""
from __future__ import annotations

import dataclasses
import re

from .errors import ReferenceError_

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"
_HUB_ALIASES = {"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"}

_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_DIGEST = re.compile(r"^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$")
_SHA256 = re.compile(r"^sha256:[0-9a-f]{64}$")
_HOST = re.compile(r"^(?:\[[0-9a-fA-F:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
                   r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*)(?::[0-9]+)?$")
MAX_NAME = 255


@dataclasses.dataclass(frozen=True)
class Reference:
    """A parsed, normalized image reference."""

    registry: str           # "docker.io", "127.0.0.1:5000", "quay.io"
    repository: str         # "library/busybox", "demo/hello"
    tag: str | None = None  # "latest" when neither tag nor digest was given
    digest: str | None = None

    @property
    def api_host(self) -> str:
        """Where the registry's HTTP API answers (Docker Hub's differs from its name)."""
        return DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry

    @property
    def name(self) -> str:
        """registry/repository, without tag or digest."""
        return f"{self.registry}/{self.repository}"

    @property
    def ref(self) -> str:
        """What goes after /manifests/: the digest when pinned, else the tag."""
        return self.digest or self.tag or "latest"

    @property
    def familiar(self) -> str:
        """The short form docker prints: 'busybox:latest', 'alice/app:1.0'."""
        name = self.repository
        if self.registry == DOCKER_HUB:
            name = name.removeprefix("library/")
        else:
            name = f"{self.registry}/{name}"
        return name + (f":{self.tag}" if self.tag else "") + (f"@{self.digest}" if self.digest else "")

    def with_tag(self, tag: str) -> "Reference":
        return dataclasses.replace(self, tag=_check_tag(tag), digest=None)

    def with_digest(self, digest: str) -> "Reference":
        return dataclasses.replace(self, digest=_check_digest(digest))

    def __str__(self) -> str:
        return self.name + (f":{self.tag}" if self.tag else "") + (f"@{self.digest}" if self.digest else "")


def _check_tag(tag: str) -> str:
    if not _TAG.match(tag):
        raise ReferenceError_(f"invalid tag {tag!r}",
                              "a tag is up to 128 letters, digits, '_', '.', '-', not starting with '.' or '-'")
    return tag


def _check_digest(digest: str) -> str:
    if not _DIGEST.match(digest):
        raise ReferenceError_(f"invalid digest {digest!r}", "a digest looks like sha256:<64 hex digits>")
    if not _SHA256.match(digest):
        raise ReferenceError_(f"unsupported digest {digest!r}",
                              "labkit verifies sha256 digests only: 'sha256:' and 64 lowercase hex digits")
    return digest


def is_registry_host(component: str) -> bool:
    return "." in component or ":" in component or component == "localhost" or component != component.lower()


def normalize_registry(host: str) -> str:
    """A registry host as references name it: Docker Hub's aliases become "docker.io"."""
    if not host or not _HOST.match(host):
        raise ReferenceError_(f"invalid registry host {host!r}",
                              "a registry is host[:port], e.g. 127.0.0.1:5000 or quay.io")
    return DOCKER_HUB if host.lower() in _HUB_ALIASES else host


def api_host(registry: str) -> str:
    """Where a registry's API answers: registry-1.docker.io for Docker Hub, else the host itself."""
    return DOCKER_HUB_API if normalize_registry(registry) == DOCKER_HUB else registry


def parse_reference(text: str, default_tag: str = "latest") -> Reference:
    """Parse and normalize an image reference; raises ReferenceError_ saying what is wrong."""
    if not isinstance(text, str) or not text or text != text.strip():
        raise ReferenceError_(f"invalid image reference {text!r}", "write it as [registry/]name[:tag][@digest]")
    rest, digest = text, None
    if "@" in rest:
        rest, digest = rest.split("@", 1)
        _check_digest(digest)
    tag = None
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > slash:
        rest, tag = rest[:colon], _check_tag(rest[colon + 1:])
    registry, _, path = rest.partition("/")
    if not path or not is_registry_host(registry):
        registry, path = DOCKER_HUB, rest
    else:
        if not _HOST.match(registry):
            raise ReferenceError_(f"invalid registry host {registry!r} in {text!r}",
                                  "a registry is host[:port], e.g. 127.0.0.1:5000 or quay.io")
        if registry.lower() in _HUB_ALIASES:
            registry = DOCKER_HUB
    if registry == DOCKER_HUB and "/" not in path:
        path = "library/" + path
    for component in path.split("/"):
        if not _COMPONENT.match(component):
            hint = ("repository names are lowercase" if component != component.lower() else
                    "each path component is lowercase letters and digits, separated by '.', '_', '__' or '-'")
            raise ReferenceError_(f"invalid repository name {path!r} in {text!r}", hint)
    if len(registry) + 1 + len(path) > MAX_NAME:
        raise ReferenceError_(f"repository name {registry}/{path} is longer than {MAX_NAME} characters",
                              "use a shorter name")
    if tag is None and digest is None:
        tag = default_tag
    return Reference(registry, path, tag, digest)
