"""pull: fetch an image from a registry into labkit's store — only what is missing.

1. GET the manifest for the tag (content negotiation: OCI and Docker types);
   its digest is checked against the bytes.
2. If it is an index / manifest list, pick the host's platform and GET that manifest.
3. For the config and each layer: skip it if the store has the digest, else
   stream it to <store>/labkit-incoming, resume it if a partial is there, verify
   digest and size, and move it into blobs/sha256/.
4. Store the manifest (and the index), then tag it in the store's index.json.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import html
import os
import time
from typing import Any, Iterable

from .. import settings
from ..images.store import Store, check_digest
from . import progress as _progress
from .client import RegistryClient
from .errors import ManifestError, PlatformNotFoundError, RegistryError
from .platform import Platform, matches, select_manifest
from .reference import Reference, parse_reference


@dataclasses.dataclass
class BlobResult:
    digest: str
    size: int
    kind: str       # config / layer
    status: str     # exists / fetched / resumed (pull); exists / mounted / uploaded (push)

    @property
    def transferred(self) -> bool:
        return self.status in ("fetched", "resumed", "uploaded")


def blob_lines(blobs: list[BlobResult]) -> list[str]:
    """One text line per blob, for the reprs of pull and push results."""
    return [f"  {b.kind:6} {b.digest[:19]}  {b.size:>10}  {b.status}" for b in blobs]


def blob_table(blobs: list[BlobResult]) -> str:
    """The same as an HTML table, for notebooks."""
    rows = "".join(f"<tr><td>{b.kind}</td><td><code>{html.escape(b.digest[:19])}…</code></td>"
                   f"<td style='text-align:right'>{b.size:,}</td><td>{b.status}</td></tr>" for b in blobs)
    return f"<table><tr><th>kind</th><th>digest</th><th>bytes</th><th>status</th></tr>{rows}</table>"


@dataclasses.dataclass
class PullResult:
    reference: Reference
    digest: str                      # the image manifest that was stored and tagged
    media_type: str
    size: int
    tag: str                         # the name it has in the store
    blobs: list[BlobResult]
    index_digest: str | None = None  # when the reference named an index / manifest list
    platform: Platform | None = None
    seconds: float = 0.0

    @property
    def fetched(self) -> list[BlobResult]:
        return [b for b in self.blobs if b.transferred]

    @property
    def skipped(self) -> list[BlobResult]:
        return [b for b in self.blobs if not b.transferred]

    @property
    def bytes_fetched(self) -> int:
        return sum(b.size for b in self.fetched)

    @property
    def descriptor(self) -> dict[str, Any]:
        d: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.platform:
            d["platform"] = _platform_json(self.platform)
        return d

    def __repr__(self) -> str:
        lines = [f"PullResult({self.reference}: {self.digest}"
                 + (f", index {self.index_digest}, platform {self.platform}" if self.index_digest else "")
                 + f", {len(self.fetched)} fetched ({self.bytes_fetched} bytes), {len(self.skipped)} already present)"]
        return "\n".join(lines + blob_lines(self.blobs))

    def _repr_html_(self) -> str:
        return (f"<b>{html.escape(str(self.reference))}</b> → <code>{self.digest}</code><br>"
                f"{len(self.fetched)} blobs fetched ({self.bytes_fetched:,} bytes), "
                f"{len(self.skipped)} already present, {self.seconds:.2f} s" + blob_table(self.blobs))


def _platform_json(p: Platform) -> dict[str, str]:
    d = {"architecture": p.architecture, "os": p.os}
    if p.variant:
        d["variant"] = p.variant
    return d


def default_store() -> Store:
    return Store(os.path.join(settings.data_root(), "images"))


def as_store(store: Store | str | None) -> Store:
    if store is None:
        return default_store()
    return Store(store) if isinstance(store, str) else store


def _client_for(ref: Reference, client: RegistryClient | None, **kwargs: Any) -> RegistryClient:
    if client is not None:
        if client.registry != ref.registry:
            raise RegistryError(f"the client is for {client.registry}, the reference {ref} is on {ref.registry}",
                                "make a RegistryClient for the reference's registry, or pass none")
        return client
    return RegistryClient.for_reference(ref, **{k: v for k, v in kwargs.items() if v is not None})


def pull(reference: str | Reference, store: Store | str | None = None, *,
         client: RegistryClient | None = None, platform: Platform | str | None = None,
         tag: str | None = None, progress: _progress.ProgressCallback | None = None,
         jobs: int = 4, retries: int = 3, credentials: tuple[str, str] | None = None,
         insecure: Iterable[str] = (), endpoint: str | None = None) -> PullResult:
    """Pull an image into `store` (default: <data root>/images) and tag it there.

    `tag` is the name in the store (default: the full reference, e.g.
    "127.0.0.1:5000/demo/hello:1.0"). `platform` picks from an index (default:
    the host's). `jobs` blobs download at once; `progress` gets ProgressEvents.
    """
    started = time.monotonic()
    ref = parse_reference(reference) if isinstance(reference, str) else reference
    store = as_store(store)
    own_client = client is None
    client = _client_for(ref, client, credentials=credentials, insecure=tuple(insecure) or None,
                         endpoint=endpoint)
    try:
        wanted = Platform.parse(platform) if isinstance(platform, str) else platform
        manifest = client.get_manifest(ref.repository, ref.ref)
        index_digest = None
        chosen: Platform | None = None
        if manifest.is_index:
            index = manifest
            chosen_descriptor = select_manifest(index.json, wanted)
            chosen = Platform.from_descriptor(chosen_descriptor)
            manifest = client.get_manifest(ref.repository, check_digest(chosen_descriptor["digest"]))
            if chosen_descriptor.get("size") not in (None, manifest.size):
                raise ManifestError(f"{ref}: the index says the {chosen} manifest is {chosen_descriptor['size']} "
                                    f"bytes, the registry sent {manifest.size}", "the index is inconsistent")
            if manifest.is_index:
                raise ManifestError(f"{ref}: an index that points to another index", "nested indexes are not supported")
            if not store.has_blob(index.digest):
                store.put_blob(index.data, expected=index.digest)
            index_digest = index.digest
        if not manifest.is_image:
            raise ManifestError(f"{ref}: unsupported manifest type {manifest.media_type}",
                                "labkit pulls OCI and Docker schema 2 images")
        try:
            blobs = _unique_blobs(manifest.blobs())
        except (KeyError, TypeError, ValueError) as exc:
            raise ManifestError(f"{ref}: malformed manifest ({exc})", "the registry sent an invalid manifest") from None
        results = _fetch_all(client, ref.repository, store, blobs, progress, jobs, retries)
        if wanted is not None and chosen is None:
            _check_config_platform(store, blobs[0][1]["digest"], wanted, ref)
        if not store.has_blob(manifest.digest):
            store.put_blob(manifest.data, expected=manifest.digest)
        name = tag or str(ref)
        result = PullResult(ref, manifest.digest, manifest.media_type, manifest.size, name, results,
                            index_digest, chosen, 0.0)
        if _tagged(store, name) != result.descriptor:
            store.tag(name, result.descriptor)
        result.seconds = time.monotonic() - started
        return result
    finally:
        if own_client:
            client.close()


def _tagged(store: Store, name: str) -> dict[str, Any] | None:
    """What `name` points at now, without the annotation that names it."""
    for m in store.index().get("manifests", []):
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == name:
            return {k: v for k, v in m.items() if k != "annotations"}
    return None


def _unique_blobs(blobs: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
    seen: set[str] = set()
    out = []
    for kind, descriptor in blobs:
        digest = check_digest(descriptor["digest"])
        size = descriptor.get("size")
        if not isinstance(size, int) or size < 0:
            raise ValueError(f"descriptor {digest} has no valid size")
        if digest not in seen:
            seen.add(digest)
            out.append((kind, descriptor))
    return out


def _fetch_all(client: RegistryClient, repository: str, store: Store, blobs: list[tuple[str, dict[str, Any]]],
               progress: _progress.ProgressCallback | None, jobs: int, retries: int) -> list[BlobResult]:
    report = progress or (lambda event: None)
    statuses: dict[str, str] = {}
    todo = []
    for kind, d in blobs:
        if store.has_blob(d["digest"]):
            statuses[d["digest"]] = "exists"
            report(_progress.ProgressEvent(d["digest"], kind, _progress.EXISTS, d["size"], d["size"]))
        else:
            todo.append((kind, d))
            report(_progress.ProgressEvent(d["digest"], kind, _progress.WAITING, 0, d["size"]))

    def fetch(kind: str, d: dict[str, Any]) -> str:
        return client.fetch_blob(repository, d["digest"], d["size"], store, progress=progress, kind=kind,
                                 retries=retries)

    if jobs <= 1 or len(todo) <= 1:
        for kind, d in todo:
            statuses[d["digest"]] = fetch(kind, d)
    else:
        def worker(kind: str, d: dict[str, Any]) -> str:
            try:
                return fetch(kind, d)
            finally:
                client.transport.close()  # this thread's connections

        with concurrent.futures.ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="labkit-pull") as pool:
            futures = {pool.submit(worker, kind, d): d["digest"] for kind, d in todo}
            errors: list[BaseException] = []
            for future in concurrent.futures.as_completed(futures):
                try:
                    statuses[futures[future]] = future.result()
                except BaseException as exc:  # noqa: BLE001 — re-raised below, after the others finish
                    errors.append(exc)
            if errors:
                raise errors[0]
    return [BlobResult(d["digest"], d["size"], kind, statuses[d["digest"]]) for kind, d in blobs]


def _check_config_platform(store: Store, config_digest: str, wanted: Platform, ref: Reference) -> None:
    try:
        config = store.get_json(config_digest)
    except (RegistryError, ValueError):
        return
    have = Platform(config.get("os", ""), config.get("architecture", ""), config.get("variant", "") or "")
    if have.os and have.architecture and not matches(wanted, have):
        raise PlatformNotFoundError(f"{ref} is a single-platform image for {have}, not {wanted}",
                                    "pull without platform=, or pick an image built for that platform")
