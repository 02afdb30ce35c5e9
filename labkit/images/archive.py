"""Image archives: the tarballs `docker save` writes and `docker load` reads, in two formats.

docker-archive — Docker's own; `docker load`, `podman load` and `skopeo copy docker-archive:`
read it:

    manifest.json          [{"Config": "<hex>.json", "RepoTags": ["app:1"], "Layers": ["<id>/layer.tar", …]}]
    <config hex>.json      the image config byte for byte: its sha256 is the image id
    <id>/layer.tar         each layer as an *uncompressed* tar: its sha256 is the layer's diff_id
    <id>/VERSION, <id>/json   Docker's legacy per-layer metadata (<id>: the layer's chain id)
    repositories           {"app": {"1": "<top layer id>"}}: for loaders older than manifest.json

oci-archive — a tar of an OCI image layout (oci-layout, index.json whose entries carry their
name in the org.opencontainers.image.ref.name annotation, blobs/sha256/…), the layout labkit's
store itself uses; `podman load` and `skopeo copy oci-archive:` read it. Saving it is
`base.export_layout` into a scratch directory, then a tar of that.

An archive is untrusted input. `load` reads it once, as a stream (a file or stdin, plain or
gzip), into a scratch directory below the store, refusing every member that would land
outside it: absolute names, `..`, links that point out, devices. Symlinks (skopeo and podman
write `<id>/layer.tar -> ../<hex>.tar`) are never created on disk: they are resolved by name,
inside the archive. Then every blob is checked — OCI blobs against their descriptors'
digests and sizes, a Docker config against the digest its file name carries, every layer
against the config's diff_ids — and only then does anything enter the store, names last:
a tampered archive leaves no tag and no half image.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import posixpath
import re
import shutil
import tarfile
import tempfile
import zlib
from typing import IO, Any, Iterable

from ..errors import LabkitError
from . import builtin, inventory
from . import layers as lay
from . import platform as plat
from .base import EPOCH, export_layout
from .image import Image
from .model import (OCI_CONFIG, OCI_LAYER, OCI_LAYER_GZIP, OCI_LAYER_ZSTD, OCI_MANIFEST, Descriptor, Index, Manifest,
                    layer_compression, parse_config, parse_document)
from .store import REF_NAME, DigestError, Store, canonical_json

DOCKER_ARCHIVE, OCI_ARCHIVE = "docker-archive", "oci-archive"
FORMATS = (DOCKER_ARCHIVE, OCI_ARCHIVE)
CONTAINERD_NAME = "io.containerd.image.name"  # docker ≥ 25 names OCI entries with it
MAX_JSON = 16 << 20   # manifest.json, index.json, configs, manifests: read whole, so bounded
MAX_LINK_HOPS = 40    # as the kernel's ELOOP limit
CHUNK = 1 << 20
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_UNNAMED = "labkit.unnamed/"  # a placeholder name, removed before the layout is archived


class ArchiveError(LabkitError):
    """The archive is malformed or hostile; nothing of it was loaded."""


# --- pure parts: member names, links, Docker's manifest.json ---------------------------------------------
def member_name(name: str) -> str:
    """A member's name as a clean relative path; absolute names and `..` are refused."""
    if name.startswith("/"):
        raise ArchiveError(f"archive member {name!r} has an absolute path",
                           "an image archive holds relative names only; it is malformed or hostile — refused")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ArchiveError(f"archive member {name!r} contains '..' and could escape the archive",
                           "an image archive never needs '..'; it is malformed or hostile — refused")
    return "/".join(parts)


def link_target(name: str, linkname: str, hard: bool = False) -> str:
    """Where a link member points, as a name inside the archive; a target outside is refused.

    A symlink's target is relative to the link's directory; a hard link names another
    member (relative to the archive's top).
    """
    if linkname.startswith("/"):
        raise ArchiveError(f"archive member {name!r} links to the absolute path {linkname!r}",
                           "links in an image archive stay inside it; it is malformed or hostile — refused")
    joined = posixpath.normpath(posixpath.join("" if hard else posixpath.dirname(name), linkname))
    if joined == ".." or joined.startswith("../"):
        raise ArchiveError(f"archive member {name!r} links to {linkname!r}, outside the archive",
                           "links in an image archive stay inside it; it is malformed or hostile — refused")
    return "" if joined == "." else joined


@dataclasses.dataclass(frozen=True)
class DockerEntry:
    """One image of a docker-archive's manifest.json."""

    config: str                 # the config's member name
    repo_tags: tuple[str, ...]  # names to tag ("app:1"); empty: load it untagged
    layers: tuple[str, ...]     # layer tars' member names, bottom first


def parse_docker_manifest(data: bytes | str) -> list[DockerEntry]:
    """manifest.json of a docker-archive: a list of {Config, RepoTags, Layers}."""
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as err:
        raise ArchiveError(f"manifest.json is not JSON: {err}", "the archive is damaged; save it again") from None
    if not isinstance(doc, list) or not doc:
        raise ArchiveError("manifest.json is not a non-empty list of images",
                           'docker-archive\'s manifest.json is [{"Config": …, "RepoTags": […], "Layers": […]}]')
    out = []
    for i, item in enumerate(doc):
        if not isinstance(item, dict):
            raise ArchiveError(f"manifest.json entry {i} is not an object", "the archive is damaged or not Docker's")
        config, tags, layers = item.get("Config"), item.get("RepoTags") or [], item.get("Layers")
        if not isinstance(config, str) or not config:
            raise ArchiveError(f"manifest.json entry {i} has no Config", "every image needs its config file")
        if not isinstance(layers, list) or not all(isinstance(x, str) and x for x in layers):
            raise ArchiveError(f"manifest.json entry {i}: Layers is not a list of file names",
                               "the archive is damaged or not Docker's")
        if not isinstance(tags, list) or not all(isinstance(t, str) and t for t in tags):
            raise ArchiveError(f"manifest.json entry {i}: RepoTags is not a list of names",
                               "the archive is damaged or not Docker's")
        out.append(DockerEntry(config, tuple(tags), tuple(layers)))
    return out


def digest_in_name(name: str) -> str | None:
    """The digest a member's name carries: `<hex>.json`, `<hex>.tar` or `blobs/sha256/<hex>`."""
    base = posixpath.basename(name)
    stem = base.rsplit(".", 1)[0] if base.endswith((".json", ".tar")) else base
    if not _HEX64.match(stem):
        return None
    if base == stem and posixpath.dirname(name).rsplit("/", 1)[-1] != "sha256":
        return None  # a bare hex name outside blobs/sha256/ promises nothing
    return "sha256:" + stem


def chain_ids(diff_ids: list[str]) -> list[str]:
    """Docker's ChainID of each layer: the layer stack up to it, as one digest."""
    out: list[str] = []
    for diff_id in diff_ids:
        out.append(diff_id if not out else "sha256:" + hashlib.sha256(f"{out[-1]} {diff_id}".encode()).hexdigest())
    return out


def repo_tag(name: str) -> str | None:
    """A store name as a docker-archive's RepoTags spells it ("app" -> "app:latest"); None if it is none."""
    if "@" in name:
        return None
    parsed = builtin._parsed(name)
    return parsed.familiar if parsed is not None else None


def repositories(entries: Iterable[tuple[Iterable[str], str | None]]) -> dict[str, dict[str, str]]:
    """The legacy `repositories` file: {repo: {tag: top layer id}} for (RepoTags, top layer id)."""
    out: dict[str, dict[str, str]] = {}
    for tags, top in entries:
        for name in tags:
            repo, _, tag = name.rpartition(":")
            if top and repo and "/" not in tag:
                out.setdefault(repo, {})[tag] = top
    return out


def archive_format(names: Iterable[str]) -> str:
    """oci-layout -> oci-archive; manifest.json -> docker-archive (docker ≥ 25 writes both: OCI wins)."""
    present = set(names)
    if "oci-layout" in present:
        return OCI_ARCHIVE
    if "manifest.json" in present:
        return DOCKER_ARCHIVE
    raise ArchiveError("the archive has neither oci-layout nor manifest.json",
                       "labkit loads what `docker save` / `podman save` write (docker-archive or oci-archive); "
                       "for a root filesystem tarball use `labkit import`")


# --- reading an archive into a scratch directory ----------------------------------------------------------
class Extracted:
    """An archive unpacked below `root`: regular files (with their sha256 and size) on disk,
    links only as names. Every lookup goes through `resolve`, which follows links by name."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.files: dict[str, tuple[str, int]] = {}
        self.links: dict[str, str] = {}
        self.dirs: set[str] = {""}

    def __repr__(self) -> str:
        return f"Extracted({self.root!r}, {len(self.files)} files, {len(self.links)} links)"

    @property
    def names(self) -> set[str]:
        return set(self.files) | set(self.links) | (self.dirs - {""})

    def add_member(self, tar: tarfile.TarFile, m: tarfile.TarInfo) -> None:
        name = member_name(m.name)
        if not name:
            return  # "./": the archive's top
        parts = name.split("/")
        for i in range(1, len(parts)):
            prefix = "/".join(parts[:i])
            if prefix in self.links or prefix in self.files:
                raise ArchiveError(f"archive member {name!r} would be written below the "
                                   f"{'link' if prefix in self.links else 'file'} {prefix!r}",
                                   "no image archive needs that; it is malformed or hostile — refused")
        if name in self.files or name in self.links or (name in self.dirs and not m.isdir()):
            raise ArchiveError(f"archive member {name!r} appears twice", "the archive is malformed — refused")
        if m.isdir():
            self._mkdirs(parts)
        elif m.isreg():
            self._mkdirs(parts[:-1])
            self.files[name] = _write_member(tar, m, os.path.join(self.root, *parts))
        elif m.issym() or m.islnk():
            self._mkdirs(parts[:-1])
            self.links[name] = link_target(name, m.linkname, hard=m.islnk())
        else:
            kind = {tarfile.CHRTYPE: "character device", tarfile.BLKTYPE: "block device",
                    tarfile.FIFOTYPE: "fifo"}.get(m.type, f"entry of type {m.type!r}")
            raise ArchiveError(f"archive member {name!r} is a {kind}",
                               "an image archive holds files, directories and links only — refused "
                               "(devices belong inside layer tars)")

    def _mkdirs(self, parts: list[str]) -> None:
        for i in range(1, len(parts) + 1):
            prefix = "/".join(parts[:i])
            if prefix not in self.dirs:
                os.makedirs(os.path.join(self.root, *parts[:i]), exist_ok=True)
                self.dirs.add(prefix)

    def resolve(self, name: str) -> str:
        """The regular file `name` is, following links inside the archive."""
        parts = [p for p in member_name(name).split("/") if p]
        done: list[str] = []
        hops = 0
        while parts:
            current = "/".join(done + [parts[0]])
            if current in self.links:
                hops += 1
                if hops > MAX_LINK_HOPS:
                    raise ArchiveError(f"{name!r}: too many levels of links in the archive", "refused")
                target = self.links[current]
                parts = (target.split("/") if target else []) + parts[1:]
                done = []
                continue
            done.append(parts.pop(0))
        final = "/".join(done)
        if final not in self.files:
            via = f" (it leads to {final!r})" if final != name else ""
            raise ArchiveError(f"the archive has no file {name!r}{via}",
                               "the archive is incomplete or damaged; save it again")
        return final

    def path(self, name: str) -> str:
        return os.path.join(self.root, *self.resolve(name).split("/"))

    def digest(self, name: str) -> tuple[str, int]:
        return self.files[self.resolve(name)]

    def read(self, name: str) -> bytes:
        final = self.resolve(name)
        if self.files[final][1] > MAX_JSON:
            raise ArchiveError(f"{name} is {self.files[final][1]} bytes: too big for image metadata",
                               "the archive is malformed — refused")
        with open(os.path.join(self.root, *final.split("/")), "rb") as f:
            return f.read()

    def blob(self, desc: Descriptor) -> str:
        """The member holding an OCI layout's blob, checked against its descriptor."""
        algo, _, hexpart = desc.digest.partition(":")
        if algo != "sha256" or not _HEX64.match(hexpart):
            raise ArchiveError(f"invalid digest {desc.digest!r} in the archive", "labkit verifies sha256 digests only")
        name = f"blobs/sha256/{hexpart}"
        digest, size = self.digest(name)
        if digest != desc.digest:
            raise DigestError(f"blob {desc.digest} in the archive does not match its digest: its content hashes "
                              f"to {digest}", "the archive was corrupted or tampered with; nothing was loaded")
        if desc.size and size != desc.size:
            raise DigestError(f"blob {desc.digest} in the archive is {size} bytes, its descriptor says {desc.size}",
                              "the archive was corrupted or tampered with; nothing was loaded")
        return name


def _write_member(tar: tarfile.TarFile, m: tarfile.TarInfo, path: str) -> tuple[str, int]:
    """A regular member written to a new file (never through a link), hashed as it goes."""
    source = tar.extractfile(m)
    assert source is not None
    h, total = hashlib.sha256(), 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as out:
        for chunk in iter(lambda: source.read(CHUNK), b""):
            h.update(chunk)
            total += len(chunk)
            out.write(chunk)
    return "sha256:" + h.hexdigest(), total


def extract(stream: IO[bytes], root: str) -> Extracted:
    """Read a tar stream (plain, gzip, bzip2 or xz) into `root`, checking every member."""
    os.makedirs(root, exist_ok=True)
    found = Extracted(root)
    try:
        with tarfile.open(fileobj=stream, mode="r|*") as tar:
            for member in tar:
                found.add_member(tar, member)
    except tarfile.TarError as err:
        raise ArchiveError(f"not a readable tar archive: {err}",
                           "give the file `labkit save`, `docker save` or `podman save` wrote") from None
    except (EOFError, OSError, zlib.error) as err:
        if isinstance(err, LabkitError):
            raise
        raise ArchiveError(f"the archive cannot be read: {err}", "it is truncated or damaged; save it again") from None
    return found


# --- load ----------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Loaded:
    """One image `load` put into the store."""

    names: list[str]   # the tags it got (none: loaded untagged, reachable by id)
    id: str            # its config digest, Docker's image id
    digest: str        # its manifest digest in the store

    def lines(self) -> list[str]:
        """What docker prints for it."""
        return [f"Loaded image: {n}" for n in self.names] or [f"Loaded image ID: {self.id}"]

    def __repr__(self) -> str:
        return f"Loaded({', '.join(self.names) or '<untagged>'}, id={self.id[:19]}…)"


@dataclasses.dataclass
class _Plan:
    names: list[str]
    blobs: list[tuple[str, Descriptor]]   # (member, descriptor): the config, then the layers
    manifest: bytes
    descriptor: Descriptor                # of the manifest
    image_id: str


def load(store: Store, stream: IO[bytes]) -> list[Loaded]:
    """Load a docker-archive or oci-archive (plain or compressed) into `store` and tag its images.

    Everything is verified before anything is stored; the tags come last.
    """
    scratch = tempfile.mkdtemp(dir=os.path.join(store.root, "blobs"), prefix=".load-")
    try:
        found = extract(stream, scratch)
        kind = archive_format(found.names)
        plans = _plan_oci(found) if kind == OCI_ARCHIVE else _plan_docker(found, store)
        for plan in plans:  # content first, then the manifest: no manifest points at a missing blob
            for member, desc in plan.blobs:
                if not store.has_blob(desc.digest):
                    store.put_file(found.path(member), desc.digest, desc.size)
            if not store.has_blob(plan.descriptor.digest):
                store.put_blob(plan.manifest, plan.descriptor.digest)
        loaded = []
        for plan in plans:
            for name in plan.names:
                store.tag(name, plan.descriptor.to_dict())
            loaded.append(Loaded(plan.names, plan.image_id, plan.descriptor.digest))
        return loaded
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def load_file(store: Store, path: str) -> list[Loaded]:
    try:
        f = open(path, "rb")
    except OSError as err:
        raise ArchiveError(f"{path}: {err.strerror}", "give the archive `labkit save -o` (or docker/podman save) "
                           "wrote") from None
    with f:
        return load(store, f)


def _name(name: str) -> str:
    """A name from an archive as the store keeps it: docker's familiar form when it is a reference."""
    return repo_tag(name) or name


def _checked_layers(found: Extracted, config_name: str, config_digest: str, layers: list[tuple[str, Descriptor]],
                    diff_ids: list[str]) -> None:
    """Each layer's uncompressed content must hash to the config's diff_id for it."""
    if len(layers) != len(diff_ids):
        raise ArchiveError(f"image {config_digest}: {len(layers)} layers, but its config {config_name} lists "
                           f"{len(diff_ids)} diff_ids", "the archive is inconsistent; nothing was loaded")
    for (member, desc), diff_id in zip(layers, diff_ids):
        compression = layer_compression(desc.media_type)
        actual = desc.digest if compression is None else _uncompressed_digest(found.path(member), compression)
        if actual != diff_id:
            raise DigestError(f"layer {member}: its content hashes to {actual}, but the image config "
                              f"{config_digest} says its diff_id is {diff_id}",
                              "the archive was corrupted or tampered with; nothing was loaded")


def _uncompressed_digest(path: str, compression: str | None) -> str:
    with open(path, "rb") as raw:
        plain = lay.decompressed(io.BufferedReader(raw, CHUNK), compression)  # type: ignore[arg-type]
        reader = lay.HashingReader(plain)
        try:
            reader.drain()
        except (EOFError, OSError, zlib.error) as err:
            raise ArchiveError(f"layer {os.path.basename(path)} cannot be decompressed: {err}",
                               "the archive is damaged or was tampered with; nothing was loaded") from None
        return reader.digest


def _sniff(path: str) -> str | None:
    with open(path, "rb") as f:
        head = f.read(4)
    return "gzip" if head.startswith(lay.GZIP_MAGIC) else "zstd" if head.startswith(lay.ZSTD_MAGIC) else None


def _plan_docker(found: Extracted, store: Store) -> list[_Plan]:
    plans = []
    for entry in parse_docker_manifest(found.read("manifest.json")):
        config_digest, config_size = found.digest(entry.config)
        promised = digest_in_name(entry.config)
        if promised and promised != config_digest:
            raise DigestError(f"image config {entry.config}: its content hashes to {config_digest}, its name says "
                              f"{promised}", "the archive was corrupted or tampered with; nothing was loaded")
        config = parse_config(found.read(entry.config))
        layers = []
        for member in entry.layers:
            digest, size = found.digest(member)
            media = {None: OCI_LAYER, "gzip": OCI_LAYER_GZIP, "zstd": OCI_LAYER_ZSTD}[_sniff(found.path(member))]
            layers.append((member, Descriptor(media, digest, size)))
        _checked_layers(found, entry.config, config_digest, layers, config.diff_ids)
        reused = _stored_manifest(store, config_digest)
        if reused is not None:  # the store has this image already (e.g. with gzip layers): tag that
            plans.append(_Plan([_name(t) for t in entry.repo_tags], [], b"", reused, config_digest))
            continue
        manifest = Manifest(config=Descriptor(OCI_CONFIG, config_digest, config_size),
                            layers=[desc for _, desc in layers])
        data = canonical_json(manifest.to_dict())
        descriptor = Descriptor(OCI_MANIFEST, "sha256:" + hashlib.sha256(data).hexdigest(), len(data))
        plans.append(_Plan([_name(t) for t in entry.repo_tags], [(entry.config, manifest.config), *layers], data,
                           descriptor, config_digest))
    return plans


def _stored_manifest(store: Store, config_digest: str) -> Descriptor | None:
    """A tagged manifest of the store for this image id, with all its blobs present."""
    docs = inventory.documents(store)
    for digest in sorted(set(store.tags().values())):
        doc = docs.get(digest)
        if isinstance(doc, Manifest) and doc.config.digest == config_digest \
                and all(store.has_blob(d.digest) for d in [doc.config, *doc.layers]):
            return Descriptor(doc.media_type or OCI_MANIFEST, digest, os.path.getsize(store.blob_path(digest)))
    return None


def _plan_oci(found: Extracted) -> list[_Plan]:
    try:
        version = json.loads(found.read("oci-layout")).get("imageLayoutVersion")
        index = json.loads(found.read("index.json"))
    except (ValueError, AttributeError) as err:
        raise ArchiveError(f"the OCI layout's oci-layout or index.json is not valid JSON: {err}",
                           "the archive is damaged; save it again") from None
    if version != "1.0.0":
        raise ArchiveError(f"unsupported OCI layout version {version!r}", "labkit reads imageLayoutVersion 1.0.0")
    entries = index.get("manifests") if isinstance(index, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ArchiveError("index.json lists no images", "the archive is empty or damaged")
    plans = []
    for entry in entries:
        desc = Descriptor.from_dict(entry)
        annotations = entry.get("annotations") or {}
        name = annotations.get(CONTAINERD_NAME) or annotations.get(REF_NAME)
        data = found.read(found.blob(desc))
        doc = parse_document(data, desc.media_type or None)
        if isinstance(doc, Index):  # multi-platform: this host's image, as import_layout does
            desc = Descriptor.from_dict(plat.select([d.to_dict() for d in doc.manifests]))
            data = found.read(found.blob(desc))
            doc = parse_document(data, desc.media_type or None)
            if isinstance(doc, Index):
                raise ArchiveError("nested image indexes are not supported", "load a single-level index")
        config_member = found.blob(doc.config)
        config = parse_config(found.read(config_member))
        layers = [(found.blob(layer), layer) for layer in doc.layers]
        _checked_layers(found, config_member, doc.config.digest, layers, config.diff_ids)
        descriptor = Descriptor(desc.media_type or doc.media_type or OCI_MANIFEST, desc.digest, len(data))
        plans.append(_Plan([_name(name)] if name else [], [(config_member, doc.config), *layers], data, descriptor,
                           doc.config.digest))
    return plans


# --- save ----------------------------------------------------------------------------------------------
def _resolve(store: Store, refs: Iterable[str]) -> list[tuple[Image, str | None]]:
    """Each ref's image and the name to save it under (None when named by id: saved untagged)."""
    out: list[tuple[Image, str | None]] = []
    for ref in refs:
        found = inventory.find(store, ref, build_busybox=True)
        name = None if found.tag is None else (repo_tag(ref) or repo_tag(found.tag) or found.tag)
        if (found.image.digest, name) not in [(i.digest, n) for i, n in out]:
            out.append((found.image, name))
    if not out:
        raise ArchiveError("no image to save", "name at least one image")
    return out


def _info(name: str, size: int = 0, directory: bool = False) -> tarfile.TarInfo:
    """A tar header with fixed owner, mode and time: the same image gives the same archive bytes."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.uid, info.gid, info.uname, info.gname = size, 0, 0, 0, "", ""
    info.mode = 0o755 if directory else 0o644
    if directory:
        info.type = tarfile.DIRTYPE
    return info


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    tar.addfile(_info(name, len(data)), io.BytesIO(data))


def _add_layer(tar: tarfile.TarFile, name: str, store: Store, desc: Descriptor, diff_id: str, scratch: str) -> None:
    """A stored layer as an uncompressed tar (gzip/zstd ones are decompressed first), checked against its diff_id."""
    reader = lay.open_layer(store, desc)
    try:
        with tempfile.TemporaryFile(dir=scratch) as spool:
            shutil.copyfileobj(reader, spool, CHUNK)  # type: ignore[misc]
            if reader.digest != diff_id:
                raise DigestError(f"stored layer {desc.digest} hashes to {reader.digest} uncompressed, the image "
                                  f"config says {diff_id}", "the store is damaged: remove the image and pull or "
                                  "load it again")
            size = spool.tell()
            spool.seek(0)
            tar.addfile(_info(name, size), spool)
    finally:
        reader.src.close()


def save_docker_archive(store: Store, refs: Iterable[str], out: IO[bytes]) -> list[str]:
    """Write the images `refs` name to `out` as a docker-archive (what `docker save` writes);
    the names saved (an image given by id is saved untagged, as docker does)."""
    images = _resolve(store, refs)
    groups: dict[str, tuple[Image, list[str]]] = {}
    for image, name in images:  # one entry per image id, with all its names
        groups.setdefault(image.id, (image, []))[1].extend([name] if name else [])
    scratch = tempfile.mkdtemp(dir=os.path.join(store.root, "blobs"), prefix=".save-")
    try:
        with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
            manifest: list[dict[str, Any]] = []
            written: set[str] = set()
            tops: list[tuple[list[str], str | None]] = []
            for image, names in groups.values():
                config = store.get_blob(image.id)
                config_name = image.id.split(":", 1)[1] + ".json"
                members: list[str] = []
                parent: str | None = None
                for desc, diff_id, chain in zip(image.layers, image.diff_ids, chain_ids(image.diff_ids)):
                    layer_id = chain.split(":", 1)[1]
                    if layer_id not in written:
                        written.add(layer_id)
                        tar.addfile(_info(layer_id, directory=True))
                        _add_bytes(tar, f"{layer_id}/VERSION", b"1.0")
                        legacy = {"id": layer_id, "created": image.config.created or EPOCH, "os": image.config.os,
                                  "architecture": image.config.architecture, **({"parent": parent} if parent else {})}
                        _add_bytes(tar, f"{layer_id}/json", canonical_json(legacy))
                        _add_layer(tar, f"{layer_id}/layer.tar", store, desc, diff_id, scratch)
                    members.append(f"{layer_id}/layer.tar")
                    parent = layer_id
                if config_name not in written:
                    written.add(config_name)
                    _add_bytes(tar, config_name, config)
                manifest.append({"Config": config_name, "RepoTags": names or None, "Layers": members})
                tops.append((names, parent))
            _add_bytes(tar, "manifest.json", json.dumps(manifest).encode())
            legacy_repos = repositories(tops)
            if legacy_repos:
                _add_bytes(tar, "repositories", json.dumps(legacy_repos).encode())
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return [n for _, names in groups.values() for n in names]


def save_oci_archive(store: Store, refs: Iterable[str], out: IO[bytes]) -> list[str]:
    """Write the images `refs` name to `out` as an oci-archive: a tar of the OCI layout
    base.export_layout makes, one index.json entry per name (ref.name annotation)."""
    images = _resolve(store, refs)
    scratch = tempfile.mkdtemp(dir=os.path.join(store.root, "blobs"), prefix=".save-")
    try:
        layout = os.path.join(scratch, "layout")
        for image, name in images:
            export_layout(image, layout, name or _UNNAMED + image.digest)
        _drop_placeholders(layout)
        with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
            for member in ("oci-layout", "index.json"):
                with open(os.path.join(layout, member), "rb") as f:
                    _add_bytes(tar, member, f.read())
            tar.addfile(_info("blobs", directory=True))
            tar.addfile(_info("blobs/sha256", directory=True))
            blobs = os.path.join(layout, "blobs", "sha256")
            for hexpart in sorted(os.listdir(blobs)):
                path = os.path.join(blobs, hexpart)
                with open(path, "rb") as f:
                    tar.addfile(_info(f"blobs/sha256/{hexpart}", os.path.getsize(path)), f)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return [name for _, name in images if name]


def _drop_placeholders(layout: str) -> None:
    """Entries of images saved by id carry no name (export_layout always gives one)."""
    path = os.path.join(layout, "index.json")
    with open(path) as f:
        index = json.load(f)
    for entry in index["manifests"]:
        annotations = entry.get("annotations") or {}
        if annotations.get(REF_NAME, "").startswith(_UNNAMED):
            del annotations[REF_NAME]
            if not annotations:
                entry.pop("annotations", None)
    with open(path, "w") as f:
        json.dump(index, f, indent=2)


def save(store: Store, refs: Iterable[str], out: IO[bytes], format: str = DOCKER_ARCHIVE) -> list[str]:
    """`docker save`: the images `refs` name, as `format` (docker-archive or oci-archive), to `out`."""
    if format not in FORMATS:
        raise ArchiveError(f"unknown archive format {format!r}", f"use one of {', '.join(FORMATS)}")
    return (save_docker_archive if format == DOCKER_ARCHIVE else save_oci_archive)(store, refs, out)


def save_file(store: Store, refs: Iterable[str], path: str, format: str = DOCKER_ARCHIVE) -> list[str]:
    """`docker save -o PATH`: written to a temp file beside PATH, renamed when complete."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.")
    except OSError as err:
        raise ArchiveError(f"cannot write {path}: {err.strerror}", "save into an existing, writable directory") from None
    try:
        with os.fdopen(fd, "wb") as f:
            names = save(store, refs, f, format)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
        return names
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise

