"""Images in the store: resolve a name to a manifest and config, and write new images.

A reference is a tag ("busybox", "app:1"), a digest ("sha256:…") or both
("app@sha256:…"). Tags are mutable entries in index.json; a digest always
names the same bytes. When the name points at an index (multi-arch), the
manifest for the wanted platform (default: this host) is chosen.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from ..errors import LabkitError
from . import platform as plat
from .model import (OCI_CONFIG, OCI_MANIFEST, Descriptor, ImageConfig, Index, Manifest, oci_media_type,
                    parse_config, parse_document)
from .store import DIGEST_RE, Store


@dataclasses.dataclass
class Image:
    """One image for one platform, as stored."""

    store: Store
    ref: str
    descriptor: Descriptor   # of the manifest
    manifest: Manifest
    config: ImageConfig

    @property
    def digest(self) -> str:
        """The manifest digest: what `name@sha256:…` pins."""
        return self.descriptor.digest

    @property
    def id(self) -> str:
        """The config digest, Docker's "image id"."""
        return self.manifest.config.digest

    @property
    def layers(self) -> list[Descriptor]:
        return self.manifest.layers

    @property
    def diff_ids(self) -> list[str]:
        return self.config.diff_ids

    @property
    def size(self) -> int:
        """Bytes of all blobs: layers (as stored, compressed), config and manifest."""
        return sum(d.size for d in self.layers) + self.manifest.config.size + self.descriptor.size

    def __repr__(self) -> str:
        return (f"Image({self.ref!r}, digest={self.digest[:19]}…, {len(self.layers)} layers, "
                f"{self.size / 1e6:.1f} MB, {self.config.platform})")

    def _repr_html_(self) -> str:
        rows = "".join(f"<tr><td>{i}</td><td><code>{d.digest[:19]}…</code></td><td>{d.size:,}</td></tr>"
                       for i, d in enumerate(self.layers))
        return (f"<b>{self.ref}</b> <code>{self.digest}</code><br>config (image id) <code>{self.id}</code>"
                f"<table><tr><th>layer</th><th>blob digest</th><th>bytes</th></tr>{rows}</table>")


def _descriptor_for(store: Store, ref: str) -> Descriptor:
    name, _, digest = ref.partition("@")
    if DIGEST_RE.match(name):
        name, digest = "", name
    if digest:
        if not store.has_blob(digest):
            raise LabkitError(f"no blob {digest} in {store.root}", "pull or import the image first")
        data = store.get_blob(digest)
        doc = parse_document(data)
        return Descriptor(doc.media_type, digest, len(data))
    return Descriptor.from_dict(store.resolve(name))


def open_image(store: Store, ref: str, platform: plat.Platform | str | None = None) -> Image:
    """The image a reference names; an index is narrowed to `platform` (default: this host)."""
    desc = _descriptor_for(store, ref)
    doc = parse_document(store.get_blob(desc.digest), desc.media_type or None)
    if isinstance(doc, Index):
        chosen = plat.select([d.to_dict() for d in doc.manifests], platform)
        desc = Descriptor.from_dict(chosen)
        doc = parse_document(store.get_blob(desc.digest), desc.media_type or None)
        if isinstance(doc, Index):
            raise LabkitError("nested image indexes are not supported", "point the tag at a manifest")
    config = parse_config(store.get_blob(doc.config.digest))
    if len(config.diff_ids) != len(doc.layers):
        raise LabkitError(f"{ref}: {len(doc.layers)} layers in the manifest, {len(config.diff_ids)} diff_ids in the config",
                          "the image is inconsistent; pull or build it again")
    return Image(store, ref, desc, doc, config)


def write_image(store: Store, config: ImageConfig, layers: list[Descriptor], tag: str | None = None,
                annotations: dict[str, str] | None = None) -> Image:
    """Store config + manifest for `layers` (already in the store) and optionally tag it.

    The config's diff_ids must list the layers' uncompressed digests in the
    same order; the manifest lists their blob digests.
    """
    if len(config.diff_ids) != len(layers):
        raise LabkitError(f"{len(layers)} layers but {len(config.diff_ids)} diff_ids in the config",
                          "set config.rootfs['diff_ids'] to the layers' diff_ids, bottom first")
    for layer in layers:
        if not store.has_blob(layer.digest):
            raise LabkitError(f"layer {layer.digest} is not in the store", "create or import the layer first")
    config_digest, config_size = store.put_json(config.to_dict())
    manifest = Manifest(config=Descriptor(OCI_CONFIG, config_digest, config_size),
                        layers=[Descriptor(oci_media_type(d.media_type), d.digest, d.size) for d in layers],
                        annotations=annotations or None)
    digest, size = store.put_json(manifest.to_dict())
    desc = Descriptor(OCI_MANIFEST, digest, size, platform=config.platform)
    if tag:
        store.tag(tag, desc.to_dict())
    return Image(store, tag or digest, desc, manifest, config)


def history_entry(created_by: str, created: str, empty_layer: bool = False, comment: str = "") -> dict[str, Any]:
    entry: dict[str, Any] = {"created": created, "created_by": created_by}
    if comment:
        entry["comment"] = comment
    if empty_layer:
        entry["empty_layer"] = True
    return entry
