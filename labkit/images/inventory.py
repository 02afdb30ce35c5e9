"""What the store holds, found by name or by id, and `docker rmi`: untag, then collect garbage.

Three ways to name an image, as Docker has them:

    a tag         "app", "app:latest", "docker.io/library/app:latest" (the same image)
    its id        the config digest, "sha256:<64 hex>", or a unique prefix of the hex ("3f2a9c")
    a digest      "app@sha256:…" or "sha256:…" of the manifest

A tag is an entry of the store's index.json; an image without any tag is
*dangling* (an untagged load or import, or one a container still uses after
`rmi -f`): its manifest stays in the store, reachable by id.

Removing (`remove`) is two steps, as in dockerd: untag, then delete the
blobs of the untagged image that nothing needs any more. "Needed" means: some
remaining tag reaches it, another manifest in the store lists it (images
share layers by digest), or a container was created from that image id — a
container's record keeps the image id, and the image stays while it exists
(dockerd's conflict rules decide when `-f` is required). Unpacked layer
directories (<data root>/layers) are removed with their blob only when no
remaining image has that diff_id and no overlay under the data root (a
container's bundle, a build step) links to them.
"""
from __future__ import annotations

import contextlib
import dataclasses
import glob
import os
import re
from typing import Iterable, Iterator, Mapping

from ..engine.errors import Conflict, NotFound
from ..errors import LabkitError
from . import builtin
from .image import Image, open_image
from .layerdirs import LayerDirs
from .model import Index, Manifest, parse_config, parse_document
from .store import Store

_ID_PREFIX = re.compile(r"^(?:sha256:)?[0-9a-f]{4,64}$")
MAX_DOCUMENT = 4 << 20  # manifests and indexes are small; bigger blobs are layers
# Where overlays that use unpacked layers live below the data root (their l/<n> symlinks).
OVERLAY_LINKS = ("containers/*/bundle/overlay/l/*", "containers/*/overlay/l/*", "build/*/overlay/l/*")


@dataclasses.dataclass(frozen=True)
class Use:
    """A container that uses an image (by the image id its record keeps)."""

    container: str   # the container's id
    running: bool    # running, paused or restarting: `rmi -f` cannot delete under it


@dataclasses.dataclass
class Found:
    image: Image
    tag: str | None  # the store tag the reference named; None when named by id or digest


@dataclasses.dataclass
class Removal:
    """What one `rmi` did, in docker's words: Untagged: NAME / Deleted: sha256:…"""

    untagged: list[str] = dataclasses.field(default_factory=list)
    deleted: list[str] = dataclasses.field(default_factory=list)        # the image id, then blobs
    layer_dirs: list[str] = dataclasses.field(default_factory=list)     # unpacked layers removed (diff_ids)
    kept: list[str] = dataclasses.field(default_factory=list)           # why something stayed

    def lines(self) -> list[str]:
        return [f"Untagged: {n}" for n in self.untagged] + [f"Deleted: {d}" for d in self.deleted]

    def __repr__(self) -> str:
        return "\n".join(self.lines() + [f"(kept: {k})" for k in self.kept]) or "Removal(nothing)"


# --- reading the store -------------------------------------------------------------------------------
def documents(store: Store) -> dict[str, Manifest | Index]:
    """Every manifest and index in the store, tagged or not, by digest."""
    found: dict[str, Manifest | Index] = {}
    for digest in store.blobs():
        path = store.blob_path(digest)
        try:
            if os.path.getsize(path) > MAX_DOCUMENT:
                continue
            with open(path, "rb") as f:
                if not f.read(64).lstrip().startswith(b"{"):
                    continue  # a layer: not JSON
                f.seek(0)
                data = f.read()
        except OSError:
            continue  # removed meanwhile
        try:
            found[digest] = parse_document(data)
        except LabkitError:
            continue  # a config, or JSON that is no image document
    return found


def _manifests_of(digest: str, docs: Mapping[str, Manifest | Index]) -> list[str]:
    """A manifest itself, or the manifests of an index that the store holds."""
    doc = docs.get(digest)
    if isinstance(doc, Index):
        return [d.digest for d in doc.manifests if isinstance(docs.get(d.digest), Manifest)]
    return [digest] if isinstance(doc, Manifest) else []


def image_id(store: Store, digest: str, docs: Mapping[str, Manifest | Index] | None = None) -> str:
    """The image id (config digest) a tag's descriptor stands for; for an index, this host's image."""
    doc = (docs or {}).get(digest)
    if isinstance(doc, Manifest):
        return doc.config.digest
    try:
        return open_image(store, digest).id
    except LabkitError:
        return digest  # an index without an image for this host: it is its own id


def tags_by_id(store: Store, docs: Mapping[str, Manifest | Index] | None = None) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, digest in sorted(store.tags().items()):
        out.setdefault(image_id(store, digest, docs), []).append(name)
    return out


def find(store: Store, ref: str, build_busybox: bool = False) -> Found:
    """The image `ref` names: a tag (any of Docker's spellings of it), an id or id prefix, a digest.

    `build_busybox`: `busybox` is built offline when the store lacks it (save does; rmi does not).
    """
    tag = builtin.local_ref(store, ref) if build_busybox else builtin.stored_name(store, ref)
    if tag and tag in store.tags():
        return Found(open_image(store, tag), tag)
    if "@" in ref:
        with _not_found(ref):
            return Found(open_image(store, ref), None)
    if _ID_PREFIX.match(ref):
        wanted = ref if ref.startswith("sha256:") else "sha256:" + ref
        docs = documents(store)
        if wanted in docs:  # a manifest (or index) digest
            with _not_found(ref):
                return Found(open_image(store, wanted), None)
        by_id: dict[str, list[str]] = {}
        for digest, doc in docs.items():
            if isinstance(doc, Manifest) and doc.config.digest.startswith(wanted):
                by_id.setdefault(doc.config.digest, []).append(digest)
        if len(by_id) > 1:
            raise NotFound(f"{ref}: the prefix matches {len(by_id)} images", "give more of the image id")
        if by_id:
            manifests = next(iter(by_id.values()))
            tagged = set(store.tags().values())
            manifest = next((m for m in sorted(manifests) if m in tagged), sorted(manifests)[0])
            return Found(open_image(store, manifest), None)
    raise NotFound(f"No such image: {ref}", "list the images with `labkit images`")


@contextlib.contextmanager
def _not_found(ref: str) -> Iterator[None]:
    """open_image's "no such blob" as docker's `No such image`."""
    try:
        yield
    except NotFound:
        raise
    except LabkitError as err:
        raise NotFound(f"No such image: {ref}", err.what) from None


def familiar(name: str) -> str:
    """How docker prints a stored name: `app` -> `app:latest`; names that are no reference stay."""
    parsed = builtin._parsed(name) if "@" not in name else None
    return parsed.familiar if parsed is not None else name


def short_id(digest: str) -> str:
    return digest.split(":", 1)[-1][:12]


# --- rmi -------------------------------------------------------------------------------------------
def remove(store: Store, ref: str, force: bool = False, users: Mapping[str, Iterable[Use]] | None = None) -> Removal:
    """`docker rmi [-f] REF`: untag; delete the image when no tag and no container needs it.

    `users` maps image ids to the containers made from them (the engine's records).
    Docker's rules: untagging the last tag of an image a container uses needs -f (the
    image stays, dangling, for the container); removing by id needs -f when several
    tags name the image or a stopped container uses it, and is refused even with -f
    while a running one does.
    """
    found = find(store, ref)
    image = found.image
    docs = documents(store)
    using = list((users or {}).get(image.id, ()))
    tags = tags_by_id(store, docs).get(image.id, [])
    if found.tag is not None:
        if not force and using and tags == [found.tag]:
            raise Conflict(f'conflict: unable to remove repository reference "{ref}" (must force) - container '
                           f"{short_id(using[0].container)} is using its referenced image {short_id(image.id)}",
                           "remove the container first (labkit rm), or -f to untag anyway (the image stays "
                           "for the container)")
        doomed = [found.tag]
    else:
        running = [u for u in using if u.running]
        if running:
            raise Conflict(f"conflict: unable to delete {short_id(image.id)} (cannot be forced) - image is being used "
                           f"by running container {short_id(running[0].container)}", "stop and remove it first")
        if not force and len(tags) > 1:
            raise Conflict(f"conflict: unable to delete {short_id(image.id)} (must be forced) - image is referenced "
                           "in multiple repositories", "remove the tags one by one, or -f to remove them all")
        if not force and using:
            raise Conflict(f"conflict: unable to delete {short_id(image.id)} (must be forced) - image is being used "
                           f"by stopped container {short_id(using[0].container)}", "remove the container first, or -f")
        doomed = tags
    removal = Removal()
    # every manifest of this image id goes: the tagged one and any dangling twin (e.g. the same
    # image loaded once from a docker-archive, uncompressed, and once from an oci-archive)
    candidates = {image.digest} | {d for d, doc in docs.items() if isinstance(doc, Manifest)
                                   and doc.config.digest == image.id}
    for name in doomed:
        candidates.add(store.tags().get(name, image.digest))
        store.untag(name)
        removal.untagged.append(familiar(name))
    if using:
        removal.kept.append(f"{image.id}: used by container {short_id(using[0].container)}")
        return removal
    collect(store, candidates, set(users or {}), removal)
    return removal


# --- garbage collection ---------------------------------------------------------------------------
def collect(store: Store, candidates: Iterable[str], in_use: set[str], removal: Removal | None = None) -> Removal:
    """Delete the manifests/indexes `candidates` and what they reference, unless still needed.

    Needed: reached from a tag, referenced by any other manifest or index in the store,
    or an image (config digest) in `in_use`. Manifests go first, layers last, so a crash
    half-way leaves no manifest that points at a missing blob.
    """
    removal = removal or Removal()
    docs = documents(store)
    tagged = _closure(set(store.tags().values()), docs)  # tags, and the manifests of tagged indexes
    doomed_docs: set[str] = set()
    for digest in candidates:
        if digest in docs:
            doomed_docs.add(digest)
            doomed_docs.update(_manifests_of(digest, docs))
    doomed_docs = {d for d in doomed_docs if d not in tagged and not _in_use(docs.get(d), in_use)}
    kept_docs = {d for d in docs if d not in doomed_docs}
    needed = _closure(kept_docs, docs)
    doomed_blobs: list[str] = []
    for digest in sorted(doomed_docs, key=lambda d: isinstance(docs[d], Manifest)):  # indexes first
        doomed_blobs.append(digest)
    diff_ids: set[str] = set()
    for digest in sorted(doomed_docs):
        doc = docs[digest]
        if isinstance(doc, Manifest):
            for blob in [doc.config.digest, *(layer.digest for layer in doc.layers)]:
                if blob not in needed and blob not in doomed_blobs:
                    doomed_blobs.append(blob)
            diff_ids.update(_diff_ids(store, doc))
    for digest in doomed_blobs:
        if not store.has_blob(digest):
            continue
        try:
            os.unlink(store.blob_path(digest))
        except FileNotFoundError:
            continue
        if not isinstance(docs.get(digest), (Manifest, Index)):
            removal.deleted.append(digest)
    # the image id first, as docker prints it
    configs = {docs[d].config.digest for d in doomed_docs if isinstance(docs[d], Manifest)}
    removal.deleted.sort(key=lambda d: d not in configs)
    _remove_layer_dirs(store, diff_ids, needed, docs, removal)
    return removal


def _in_use(doc: Manifest | Index | None, in_use: set[str]) -> bool:
    return isinstance(doc, Manifest) and doc.config.digest in in_use


def _closure(roots: Iterable[str], docs: Mapping[str, Manifest | Index]) -> set[str]:
    """Every blob the documents `roots` reach: child manifests, configs, layers."""
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        digest = todo.pop()
        if digest in seen:
            continue
        seen.add(digest)
        doc = docs.get(digest)
        if isinstance(doc, Index):
            todo.extend(d.digest for d in doc.manifests)
        elif isinstance(doc, Manifest):
            seen.add(doc.config.digest)
            seen.update(layer.digest for layer in doc.layers)
    return seen


def _diff_ids(store: Store, manifest: Manifest) -> list[str]:
    try:
        return parse_config(store.get_blob(manifest.config.digest)).diff_ids
    except LabkitError:
        return []


def _remove_layer_dirs(store: Store, diff_ids: set[str], needed: set[str], docs: Mapping[str, Manifest | Index],
                       removal: Removal) -> None:
    """Unpacked layers of the removed image that no remaining image and no overlay uses."""
    data_root = os.path.dirname(os.path.abspath(store.root))
    root = os.path.join(data_root, "layers")
    if not diff_ids or not os.path.isdir(os.path.join(root, "sha256")):
        return
    still = {d for digest in needed if isinstance(docs.get(digest), Manifest)
             for d in _diff_ids(store, docs[digest])}  # type: ignore[arg-type]
    linked = overlay_links(data_root)
    dirs = LayerDirs(root)
    for diff_id in sorted(diff_ids - still):
        if not dirs.has(diff_id):
            continue
        path = os.path.realpath(dirs.path(diff_id))
        if path in linked:
            removal.kept.append(f"unpacked layer {diff_id[:19]}…: an overlay under {data_root} uses it")
            continue
        dirs.remove(diff_id)
        removal.layer_dirs.append(diff_id)


def overlay_links(data_root: str) -> set[str]:
    """The layer directories that overlays under `data_root` point at (containers, builds)."""
    found = set()
    for pattern in OVERLAY_LINKS:
        for link in glob.glob(os.path.join(data_root, pattern)):
            if os.path.islink(link):
                found.add(os.path.realpath(link))
    return found
