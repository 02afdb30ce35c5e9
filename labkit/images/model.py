"""The OCI image model: descriptors, manifests, image indexes and image configs.

An image is a tree of JSON documents addressed by digest:

    index (optional, multi-arch) -> manifest -> config   (the image id is its digest)
                                             -> layers   (tar blobs, bottom first)

Docker's schema2 manifest and manifest list have the same shape under other
media types, so they are read into the same classes (`MEDIA_ALIASES` maps
them). Every class keeps the fields it does not type in `extra`, so a
document read and written back loses nothing.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any

from ..errors import LabkitError
from .platform import Platform

# --- media types -----------------------------------------------------------------------
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_SCHEMA1 = ("application/vnd.docker.distribution.manifest.v1+json",
                  "application/vnd.docker.distribution.manifest.v1+prettyjws")

# Docker names -> the OCI name with the same meaning.
MEDIA_ALIASES = {
    DOCKER_LIST: OCI_INDEX,
    DOCKER_MANIFEST: OCI_MANIFEST,
    DOCKER_CONFIG: OCI_CONFIG,
    DOCKER_LAYER_GZIP: OCI_LAYER_GZIP,
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip": OCI_LAYER_GZIP,
    "application/vnd.oci.image.layer.nondistributable.v1.tar": OCI_LAYER,
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip": OCI_LAYER_GZIP,
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd": OCI_LAYER_ZSTD,
}
LAYER_TYPES = {OCI_LAYER: None, OCI_LAYER_GZIP: "gzip", OCI_LAYER_ZSTD: "zstd"}


def oci_media_type(media_type: str) -> str:
    """The OCI equivalent of a (possibly Docker) media type."""
    return MEDIA_ALIASES.get(media_type, media_type)


def layer_compression(media_type: str) -> str | None:
    """'gzip', 'zstd' or None (plain tar) for a layer media type."""
    oci = oci_media_type(media_type)
    if oci not in LAYER_TYPES:
        raise LabkitError(f"{media_type!r} is not a layer media type labkit can unpack",
                          f"supported: {', '.join(LAYER_TYPES)} and their Docker equivalents")
    return LAYER_TYPES[oci]


# --- a tiny JSON <-> dataclass mapping that keeps unknown keys --------------------------------
def _key(name: str) -> dict[str, Any]:
    return {"key": name}


class _Doc:
    """from_dict/to_dict by field metadata["key"]; unknown keys survive in `extra`."""

    NESTED: dict[str, Any] = {}

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        if not isinstance(data, dict):
            raise LabkitError(f"{cls.__name__}: expected a JSON object, got {type(data).__name__}",
                              "the document is not an OCI image document")
        kwargs: dict[str, Any] = {}
        used = set()
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            key = f.metadata.get("key")
            if key is None or key not in data:
                continue
            used.add(key)
            value, kind = data[key], cls.NESTED.get(f.name)
            if isinstance(kind, list) and value is not None:
                value = [kind[0].from_dict(v) for v in value]
            elif kind is not None and value is not None:
                value = kind.from_dict(value)
            kwargs[f.name] = value
        kwargs["extra"] = {k: v for k, v in data.items() if k not in used}
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            key, value = f.metadata.get("key"), getattr(self, f.name)
            if key is None or value is None or (value in ("", {}, []) and f.metadata.get("omitempty", True)):
                continue
            if isinstance(value, list):
                value = [v.to_dict() if isinstance(v, (_Doc, Platform)) else v for v in value]
            elif isinstance(value, (_Doc, Platform)):
                value = value.to_dict()
            out[key] = value
        out.update(getattr(self, "extra", {}))
        return out


@dataclasses.dataclass
class Descriptor(_Doc):
    """A pointer to a blob: what it is, its digest and its size."""

    NESTED = {"platform": Platform}
    media_type: str = dataclasses.field(default="", metadata=_key("mediaType"))
    digest: str = dataclasses.field(default="", metadata=_key("digest"))
    size: int = dataclasses.field(default=0, metadata={"key": "size", "omitempty": False})
    annotations: dict[str, str] | None = dataclasses.field(default=None, metadata=_key("annotations"))
    platform: Platform | None = dataclasses.field(default=None, metadata=_key("platform"))
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __repr__(self) -> str:
        return f"Descriptor({self.media_type.rsplit('.', 1)[-1]} {self.digest[:19]}… {self.size} B)"


@dataclasses.dataclass
class Manifest(_Doc):
    """One image for one platform: a config blob and the layers, bottom first."""

    NESTED = {"config": Descriptor, "layers": [Descriptor]}
    schema_version: int = dataclasses.field(default=2, metadata=_key("schemaVersion"))
    media_type: str = dataclasses.field(default=OCI_MANIFEST, metadata=_key("mediaType"))
    config: Descriptor = dataclasses.field(default_factory=Descriptor, metadata=_key("config"))
    layers: list[Descriptor] = dataclasses.field(default_factory=list, metadata={"key": "layers", "omitempty": False})
    annotations: dict[str, str] | None = dataclasses.field(default=None, metadata=_key("annotations"))
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def is_docker(self) -> bool:
        return self.media_type == DOCKER_MANIFEST


@dataclasses.dataclass
class Index(_Doc):
    """A list of manifests, one per platform (Docker calls it a manifest list)."""

    NESTED = {"manifests": [Descriptor]}
    schema_version: int = dataclasses.field(default=2, metadata=_key("schemaVersion"))
    media_type: str = dataclasses.field(default=OCI_INDEX, metadata=_key("mediaType"))
    manifests: list[Descriptor] = dataclasses.field(default_factory=list,
                                                    metadata={"key": "manifests", "omitempty": False})
    annotations: dict[str, str] | None = dataclasses.field(default=None, metadata=_key("annotations"))
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class RunConfig(_Doc):
    """The execution defaults of an image (the "config" object inside the config blob)."""

    user: str = dataclasses.field(default="", metadata=_key("User"))
    exposed_ports: dict[str, dict] | None = dataclasses.field(default=None, metadata=_key("ExposedPorts"))
    env: list[str] | None = dataclasses.field(default=None, metadata=_key("Env"))
    entrypoint: list[str] | None = dataclasses.field(default=None, metadata=_key("Entrypoint"))
    cmd: list[str] | None = dataclasses.field(default=None, metadata=_key("Cmd"))
    volumes: dict[str, dict] | None = dataclasses.field(default=None, metadata=_key("Volumes"))
    working_dir: str = dataclasses.field(default="", metadata=_key("WorkingDir"))
    labels: dict[str, str] | None = dataclasses.field(default=None, metadata=_key("Labels"))
    stop_signal: str = dataclasses.field(default="", metadata=_key("StopSignal"))
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class ImageConfig(_Doc):
    """The config blob: platform, run defaults, the layers' diff_ids and the history."""

    NESTED = {"config": RunConfig}
    architecture: str = dataclasses.field(default="amd64", metadata=_key("architecture"))
    os: str = dataclasses.field(default="linux", metadata=_key("os"))
    variant: str = dataclasses.field(default="", metadata=_key("variant"))
    created: str = dataclasses.field(default="", metadata=_key("created"))
    author: str = dataclasses.field(default="", metadata=_key("author"))
    config: RunConfig = dataclasses.field(default_factory=RunConfig, metadata=_key("config"))
    rootfs: dict[str, Any] = dataclasses.field(default_factory=lambda: {"type": "layers", "diff_ids": []},
                                               metadata={"key": "rootfs", "omitempty": False})
    history: list[dict[str, Any]] | None = dataclasses.field(default=None, metadata=_key("history"))
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def diff_ids(self) -> list[str]:
        """Digests of the *uncompressed* layer tars, bottom first (not the blob digests)."""
        return list(self.rootfs.get("diff_ids") or [])

    @property
    def platform(self) -> Platform:
        return Platform(self.os, self.architecture, self.variant)

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out.setdefault("config", {})  # the spec allows it empty, but tools expect the key
        return out


# --- parsing -------------------------------------------------------------------------------
def load_json(data: bytes | str | dict[str, Any]) -> dict[str, Any]:
    if isinstance(data, dict):
        return data
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as err:
        raise LabkitError(f"not a JSON document: {err}", "the blob is not a manifest, index or config") from None
    if not isinstance(doc, dict):
        raise LabkitError("the document is not a JSON object", "expected an OCI manifest, index or config")
    return doc


def document_kind(doc: dict[str, Any], media_type: str | None = None) -> str:
    """'index' or 'manifest', from the media type (given or inside) or, failing that, the shape."""
    media = media_type or doc.get("mediaType") or ""
    if media in DOCKER_SCHEMA1 or doc.get("schemaVersion") == 1:
        raise LabkitError("Docker schema1 manifests are not supported (deprecated since 2017)",
                          "ask the registry for schema2/OCI: send an Accept header listing them")
    oci = oci_media_type(media)
    if oci == OCI_INDEX or (not media and "manifests" in doc):
        return "index"
    if oci == OCI_MANIFEST or (not media and "layers" in doc):
        return "manifest"
    raise LabkitError(f"unknown manifest media type {media!r}",
                      f"labkit reads {OCI_INDEX}, {OCI_MANIFEST} and Docker's schema2 equivalents")


def parse_document(data: bytes | str | dict[str, Any], media_type: str | None = None) -> Manifest | Index:
    """A manifest or an index (OCI or Docker schema2), whichever `data` is."""
    doc = load_json(data)
    if document_kind(doc, media_type) == "index":
        return Index.from_dict(doc)
    manifest = Manifest.from_dict(doc)
    if not manifest.config.digest:
        raise LabkitError("the manifest has no config descriptor", "it is not a valid image manifest")
    return manifest


def parse_config(data: bytes | str | dict[str, Any]) -> ImageConfig:
    config = ImageConfig.from_dict(load_json(data))
    if config.config is None:  # "config": null is valid: no run defaults
        config.config = RunConfig()
    if config.rootfs.get("type") != "layers":
        raise LabkitError(f"image config rootfs.type is {config.rootfs.get('type')!r}, not 'layers'",
                          "the config blob is not an OCI/Docker image config")
    return config
