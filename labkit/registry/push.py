"""push: send an image from labkit's store to a registry — only what it lacks.

For an image manifest: the config and layers first (each: HEAD — skip if the
registry has it; else mount it from another repository if asked; else upload
monolithic or in chunks), then PUT the manifest under the tag. For an index:
each platform's image (pushed by digest) first, then the index under the tag.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import html
import time
from typing import Any, Iterable

from ..images.store import Store, check_digest
from . import progress as _progress
from .client import INDEX_TYPES, IMAGE_TYPES, RegistryClient, media_type_of
from .errors import ManifestError
from .pull import BlobResult, _client_for, _unique_blobs, as_store, blob_lines, blob_table
from .reference import Reference, parse_reference


@dataclasses.dataclass
class PushResult:
    reference: Reference
    digest: str            # of the manifest or index pushed under the tag
    media_type: str
    blobs: list[BlobResult]
    manifests: list[str]   # every manifest digest PUT (children of an index first)
    seconds: float = 0.0

    @property
    def uploaded(self) -> list[BlobResult]:
        return [b for b in self.blobs if b.status == "uploaded"]

    @property
    def skipped(self) -> list[BlobResult]:
        return [b for b in self.blobs if b.status != "uploaded"]

    def __repr__(self) -> str:
        lines = [f"PushResult({self.reference}: {self.digest}, {len(self.uploaded)} uploaded, "
                 f"{len(self.skipped)} skipped or mounted)"]
        return "\n".join(lines + blob_lines(self.blobs))

    def _repr_html_(self) -> str:
        return (f"<b>{html.escape(str(self.reference))}</b> ← <code>{self.digest}</code><br>"
                f"{len(self.uploaded)} uploaded, {len(self.skipped)} skipped or mounted, {self.seconds:.2f} s"
                + blob_table(self.blobs))


def resolve_source(store: Store, source: str | dict[str, Any]) -> dict[str, Any]:
    """A descriptor for what to push: a tag in the store, a manifest digest, or a descriptor."""
    if isinstance(source, dict):
        descriptor = dict(source)
    elif source.startswith("sha256:"):
        data = store.get_blob(check_digest(source))
        descriptor = {"digest": source, "size": len(data), "mediaType": media_type_of(data)}
    else:
        descriptor = store.resolve(source)
    if not descriptor.get("mediaType"):
        descriptor["mediaType"] = media_type_of(store.get_blob(descriptor["digest"]))
    return descriptor


def push(store: Store | str | None, source: str | dict[str, Any], reference: str | Reference, *,
         client: RegistryClient | None = None, chunk_size: int | None = None, mount_from: str | None = None,
         progress: _progress.ProgressCallback | None = None, jobs: int = 4,
         credentials: tuple[str, str] | None = None, insecure: Iterable[str] = (),
         endpoint: str | None = None) -> PushResult:
    """Push the image `source` (a store tag, a manifest digest or a descriptor) to `reference`.

    `chunk_size` (bytes) switches to chunked uploads for blobs larger than it;
    `mount_from` names a repository on the same registry to mount blobs from.
    """
    started = time.monotonic()
    ref = parse_reference(reference) if isinstance(reference, str) else reference
    store = as_store(store)
    own_client = client is None
    client = _client_for(ref, client, credentials=credentials, insecure=tuple(insecure) or None,
                         endpoint=endpoint)
    try:
        top = resolve_source(store, source)
        if ref.digest and ref.digest != top["digest"]:
            raise ManifestError(f"{ref} pins {ref.digest}, but {source!r} is {top['digest']}",
                                "push to a tag, or to the digest of the image you push")
        target = ref.tag if ref.tag and not ref.digest else top["digest"]
        client.transport.authenticate(client.push_scope(ref.repository, mount_from or ""))
        blobs: list[BlobResult] = []
        manifests: list[str] = []
        if top["mediaType"] in INDEX_TYPES:
            index = store.get_json(top["digest"])
            for child in index.get("manifests") or []:
                if not store.has_blob(child["digest"]):
                    raise ManifestError(f"the index {top['digest']} lists {child['digest']} "
                                        f"({child.get('platform', {})}), which is not in the store",
                                        "pull every platform of the image (or push one platform's manifest instead)")
                blobs += _push_image(client, ref.repository, store, child, child["digest"], chunk_size, mount_from,
                                     progress, jobs)
                manifests.append(child["digest"])
        elif top["mediaType"] not in IMAGE_TYPES:
            raise ManifestError(f"cannot push {top['mediaType']}", "push an OCI / Docker image manifest or index")
        else:
            blobs += _push_blobs(client, ref.repository, store, top, chunk_size, mount_from, progress, jobs)
        data = store.get_blob(top["digest"])
        client.put_manifest(ref.repository, target, data, top["mediaType"])
        manifests.append(top["digest"])
        return PushResult(ref, top["digest"], top["mediaType"], blobs, manifests, time.monotonic() - started)
    finally:
        if own_client:
            client.close()


def _push_image(client: RegistryClient, repository: str, store: Store, descriptor: dict[str, Any], target: str,
                chunk_size: int | None, mount_from: str | None, progress, jobs: int) -> list[BlobResult]:
    media_type = descriptor.get("mediaType") or media_type_of(store.get_blob(descriptor["digest"]))
    if media_type not in IMAGE_TYPES:
        raise ManifestError(f"cannot push {media_type} inside an index", "indexes of image manifests only")
    results = _push_blobs(client, repository, store, {**descriptor, "mediaType": media_type}, chunk_size,
                          mount_from, progress, jobs)
    client.put_manifest(repository, target, store.get_blob(descriptor["digest"]), media_type)
    return results


def _push_blobs(client: RegistryClient, repository: str, store: Store, descriptor: dict[str, Any],
                chunk_size: int | None, mount_from: str | None, progress, jobs: int) -> list[BlobResult]:
    manifest = store.get_json(descriptor["digest"])
    try:
        blobs = _unique_blobs([("config", manifest["config"]),
                               *(("layer", layer) for layer in manifest.get("layers") or [])])
    except (KeyError, TypeError, ValueError) as exc:
        raise ManifestError(f"malformed manifest {descriptor['digest']} in the store ({exc})",
                            "rebuild or re-pull the image") from None
    for _, d in blobs:
        if not store.has_blob(d["digest"]):
            raise ManifestError(f"blob {d['digest']} of {descriptor['digest']} is not in the store",
                                "the image is incomplete locally: pull or build it again")

    def one(kind: str, d: dict[str, Any]) -> BlobResult:
        status = client.push_blob(repository, d["digest"], d["size"], store, chunk_size=chunk_size,
                                  mount_from=mount_from, progress=progress, kind=kind)
        return BlobResult(d["digest"], d["size"], kind, status)

    if jobs <= 1 or len(blobs) <= 1:
        return [one(kind, d) for kind, d in blobs]

    def worker(kind: str, d: dict[str, Any]) -> BlobResult:
        try:
            return one(kind, d)
        finally:
            client.transport.close()

    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="labkit-push") as pool:
        futures = [pool.submit(worker, kind, d) for kind, d in blobs]
        concurrent.futures.wait(futures)
    return [f.result() for f in futures]
