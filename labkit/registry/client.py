"""RegistryClient: the OCI distribution API, one method per endpoint.

    GET  /v2/                                   ping (and the auth challenge)
    GET  /v2/<name>/manifests/<tag|digest>      manifest or index (content negotiation by Accept)
    PUT  /v2/<name>/manifests/<tag|digest>      push a manifest / index
    HEAD /v2/<name>/blobs/<digest>              does the registry have this blob?
    GET  /v2/<name>/blobs/<digest>              a blob (Range: bytes=N- resumes)
    POST /v2/<name>/blobs/uploads/[?mount=&from=]  start an upload (or mount from another repo)
    PATCH <location>  (Content-Range)           one chunk of an upload
    PUT  <location>?digest=<digest>             finish an upload
    GET  /v2/<name>/tags/list, /v2/_catalog     listings
Every manifest and blob is checked against its digest before labkit keeps it.
"""
from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import http.client
import json
import os
import re
import urllib.parse
from functools import cached_property
from typing import IO, Any, Iterable

from ..images.store import DigestError, Store, check_digest
from . import auth as _auth
from . import progress as _progress
from .errors import (DigestMismatchError, ManifestError, RegistryError, RegistryUnreachableError)
from .reference import DOCKER_HUB, Reference, api_host, normalize_registry, parse_reference
from .transport import CHUNK, MAX_ERROR_BODY, Response, Transport, default_endpoint

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_SCHEMA1 = ("application/vnd.docker.distribution.manifest.v1+json",
                  "application/vnd.docker.distribution.manifest.v1+prettyjws")
IMAGE_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
ACCEPT = ", ".join((OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST))
MAX_MANIFEST = 4 << 20  # the distribution spec lets registries refuse larger manifests
INCOMING = "labkit-incoming"


def media_type_of(data: bytes | dict[str, Any], declared: str | None = None) -> str:
    """A manifest's media type: its own mediaType field, else the declared one, else by shape."""
    doc = json.loads(data) if isinstance(data, (bytes, bytearray)) else data
    if isinstance(doc, dict) and isinstance(doc.get("mediaType"), str) and doc["mediaType"]:
        return doc["mediaType"]
    if declared:
        declared = declared.split(";", 1)[0].strip()
        if declared in IMAGE_TYPES + INDEX_TYPES + DOCKER_SCHEMA1:
            return declared
    if isinstance(doc, dict) and "manifests" in doc:
        return OCI_INDEX
    if isinstance(doc, dict) and "layers" in doc:
        return OCI_MANIFEST
    if isinstance(doc, dict) and doc.get("schemaVersion") == 1:
        return DOCKER_SCHEMA1[1]
    return declared or "application/octet-stream"


@dataclasses.dataclass(frozen=True)
class Manifest:
    """A manifest or index as the registry sent it: the exact bytes, their digest, their type."""

    media_type: str
    digest: str
    data: bytes

    @cached_property
    def json(self) -> dict[str, Any]:
        return json.loads(self.data)

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_TYPES

    @property
    def is_image(self) -> bool:
        return self.media_type in IMAGE_TYPES

    @property
    def size(self) -> int:
        return len(self.data)

    def descriptor(self, **extra: Any) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size, **extra}

    def blobs(self) -> list[tuple[str, dict[str, Any]]]:
        """(kind, descriptor) for the config and each layer of an image manifest."""
        if not self.is_image:
            return []
        doc = self.json
        return [("config", doc["config"]), *(("layer", layer) for layer in doc.get("layers") or [])]

    def __repr__(self) -> str:
        return f"Manifest({self.media_type}, {self.digest}, {self.size} bytes)"


@dataclasses.dataclass(frozen=True)
class PingResult:
    status: int
    api_version: str | None
    challenges: list[_auth.Challenge]

    @property
    def ok(self) -> bool:
        return self.status in (200, 401)


def _with_query(url: str, **params: str) -> str:
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True) + list(params.items())
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


def _content_range_start(value: str | None) -> int | None:
    m = re.match(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", value or "")
    return int(m.group(1)) if m else None


class _ProgressReader:
    """A file wrapper that reports upload progress as http.client reads it."""

    def __init__(self, f: IO[bytes], report) -> None:
        self.f, self.report, self.done = f, report, 0

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.done += len(data)
        self.report(self.done)
        return data

    def seek(self, pos: int, whence: int = 0) -> int:
        self.done = pos if whence == 0 else self.done
        return self.f.seek(pos, whence)

    def tell(self) -> int:
        return self.f.tell()


class RegistryClient:
    """A client for one registry (auth, tokens and connections shared by its calls).

    RegistryClient("127.0.0.1:5000") speaks plain HTTP (loopback);
    RegistryClient("docker.io") speaks HTTPS to registry-1.docker.io;
    `endpoint="http://127.0.0.1:PORT"` points any registry name at another server
    (tests use it to play Docker Hub on loopback).
    """

    def __init__(self, registry: str = DOCKER_HUB, *, endpoint: str | None = None,
                 credentials: _auth.Credentials | tuple[str, str] | None = None,
                 docker_config: str | None = None, insecure: Iterable[str] = (),
                 timeout: float = 60.0, rate_limit_wait: float = 0.0) -> None:
        self.registry = normalize_registry(registry)
        insecure = tuple(insecure)
        creds = _auth.as_credentials(credentials)
        if creds is None:
            creds = _auth.credentials_from_docker_config(self.registry, docker_config)
        self.transport = Transport(endpoint or default_endpoint(api_host(self.registry), insecure),
                                   credentials=creds, insecure=insecure, timeout=timeout,
                                   rate_limit_wait=rate_limit_wait)

    @classmethod
    def for_reference(cls, reference: Reference | str, **kwargs: Any) -> "RegistryClient":
        ref = parse_reference(reference) if isinstance(reference, str) else reference
        return cls(ref.registry, **kwargs)

    def __repr__(self) -> str:
        who = f", user={self.transport.credentials.username!r}" if self.transport.credentials else ""
        return f"RegistryClient({self.registry!r}, endpoint={self.transport.endpoint!r}{who})"

    @property
    def endpoint(self) -> str:
        return self.transport.endpoint

    @property
    def log(self) -> list:
        """Every HTTP exchange so far (method, url, status): count them to see what a pull cost."""
        return self.transport.log

    def close(self) -> None:
        self.transport.close()

    def request(self, method: str, path: str, **kwargs: Any) -> Response:
        """A raw request on this registry (auth handled), for exploring the API by hand."""
        kwargs.setdefault("expect", range(200, 400))
        return self.transport.request(method, path, **kwargs)

    # --- base ---------------------------------------------------------------------------------
    def ping(self) -> PingResult:
        """GET /v2/: 200 (open) or 401 with the challenge saying how to authenticate."""
        response = self.transport._send("GET", self.transport.url("/v2/"), {}, None)
        response.read(MAX_ERROR_BODY)
        response.close()
        if response.status not in (200, 401):
            raise RegistryError(f"{self.endpoint}/v2/ answered HTTP {response.status}: not a registry (v2 API)",
                                "check the host and port", status=response.status)
        challenges = _auth.parse_www_authenticate(response.header("WWW-Authenticate", "") or "")
        self.transport.learn(challenges)
        return PingResult(response.status, response.header("Docker-Distribution-API-Version"), challenges)

    @staticmethod
    def pull_scope(repository: str) -> tuple[str, ...]:
        return (_auth.repository_scope(repository, "pull"),)

    @staticmethod
    def push_scope(repository: str, *also_pull: str) -> tuple[str, ...]:
        return (_auth.repository_scope(repository, "pull", "push"),
                *(_auth.repository_scope(r, "pull") for r in also_pull if r and r != repository))

    # --- manifests --------------------------------------------------------------------------------
    def get_manifest(self, repository: str, reference: str, *, accept: str = ACCEPT) -> Manifest:
        """Fetch a manifest or index; its digest is checked against the bytes (and the reference)."""
        response = self.transport.request(
            "GET", f"/v2/{repository}/manifests/{reference}", headers={"Accept": accept},
            scopes=self.pull_scope(repository), stream=True, what=f"manifest {repository}:{reference}")
        length = response.header("Content-Length")
        if length and length.isdigit() and int(length) > MAX_MANIFEST:
            response.close()
            raise ManifestError(f"manifest {repository}:{reference} is {length} bytes, over {MAX_MANIFEST}",
                                "manifests are small JSON documents; this registry sent something else")
        data = response.read(MAX_MANIFEST + 1)
        response.close()
        if len(data) > MAX_MANIFEST:
            raise ManifestError(f"manifest {repository}:{reference} is over {MAX_MANIFEST} bytes",
                                "manifests are small JSON documents; this registry sent something else")
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        claimed = response.header("Docker-Content-Digest")
        if claimed and claimed.startswith("sha256:") and claimed != digest:
            raise DigestMismatchError(
                f"manifest {repository}:{reference}: the registry says Docker-Content-Digest {claimed}, "
                f"but the bytes received hash to {digest}",
                "the manifest was altered in transit or by the registry; nothing was stored — do not trust it")
        if reference.startswith("sha256:") and reference != digest:
            raise DigestMismatchError(
                f"manifest {repository}@{reference}: the bytes received hash to {digest}",
                "content fetched by digest must hash to that digest; nothing was stored — do not trust it")
        try:
            media_type = media_type_of(data, response.header("Content-Type"))
        except ValueError:
            raise ManifestError(f"manifest {repository}:{reference} is not JSON",
                                "the registry sent something that is not a manifest") from None
        if media_type in DOCKER_SCHEMA1:
            raise ManifestError(f"manifest {repository}:{reference} is a Docker schema 1 manifest",
                                "schema 1 is deprecated and not supported; re-push the image with a current tool")
        return Manifest(media_type, digest, data)

    def head_manifest(self, repository: str, reference: str) -> dict[str, Any] | None:
        """The descriptor of a manifest (no body), or None if the registry has no such manifest."""
        response = self.transport.request(
            "HEAD", f"/v2/{repository}/manifests/{reference}", headers={"Accept": ACCEPT},
            scopes=self.pull_scope(repository), expect=(200, 404), what=f"manifest {repository}:{reference}")
        if response.status == 404:
            return None
        return {"mediaType": (response.header("Content-Type") or "").split(";")[0],
                "digest": response.header("Docker-Content-Digest"),
                "size": int(response.header("Content-Length") or 0)}

    def put_manifest(self, repository: str, reference: str, data: bytes, media_type: str | None = None) -> str:
        """Push a manifest or index under a tag or its digest; returns its digest (checked)."""
        media_type = media_type or media_type_of(data)
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        response = self.transport.request(
            "PUT", f"/v2/{repository}/manifests/{reference}", body=bytes(data),
            headers={"Content-Type": media_type, "Content-Length": str(len(data))},
            scopes=self.push_scope(repository), expect=(201, 200), what=f"push manifest {repository}:{reference}")
        claimed = response.header("Docker-Content-Digest")
        if claimed and claimed != digest:
            raise DigestMismatchError(f"the registry stored manifest {repository}:{reference} as {claimed}, "
                                      f"but its bytes hash to {digest}",
                                      "the registry rewrote the manifest; check its media type")
        return digest

    def delete_manifest(self, repository: str, digest: str) -> None:
        """Delete a manifest by digest (the registry must allow deletes)."""
        self.transport.request("DELETE", f"/v2/{repository}/manifests/{check_digest(digest)}",
                               scopes=(_auth.repository_scope(repository, "delete"),), expect=(202, 200))

    # --- blobs: pull ----------------------------------------------------------------------------------
    def blob_size(self, repository: str, digest: str, *, scopes: tuple[str, ...] | None = None) -> int | None:
        """HEAD a blob: its size if the registry has it in this repository, else None."""
        response = self.transport.request(
            "HEAD", f"/v2/{repository}/blobs/{check_digest(digest)}", expect=(200, 404),
            scopes=scopes or self.pull_scope(repository), what=f"blob {digest}")
        if response.status == 404:
            return None
        return int(response.header("Content-Length") or 0)

    def open_blob(self, repository: str, digest: str, offset: int = 0) -> Response:
        """A streaming response for a blob, from byte `offset` on (HTTP Range); close it when done."""
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        return self.transport.request("GET", f"/v2/{repository}/blobs/{check_digest(digest)}", headers=headers,
                                      scopes=self.pull_scope(repository), expect=(200, 206), stream=True,
                                      what=f"blob {digest}")

    @staticmethod
    def incoming_dir(store: Store) -> str:
        path = os.path.join(store.root, INCOMING)
        os.makedirs(path, exist_ok=True)
        return path

    @classmethod
    def partial_path(cls, store: Store, digest: str) -> str:
        """Where an unfinished download of `digest` is kept until it can be resumed."""
        return os.path.join(cls.incoming_dir(store), check_digest(digest).replace(":", "-") + ".partial")

    def fetch_blob(self, repository: str, digest: str, size: int | None, store: Store, *,
                   progress: _progress.ProgressCallback | None = None, kind: str = "layer",
                   retries: int = 3) -> str:
        """Download a blob into `store`, verified; resumes a partial download with Range.

        Returns "exists", "fetched" or "resumed". A broken transfer is retried
        `retries` times from where it stopped; if it still fails the partial file
        stays in <store>/labkit-incoming and the next call resumes it. Content that
        does not match `digest`/`size` raises DigestMismatchError and nothing is kept.
        """
        report = progress or (lambda event: None)
        path = self.partial_path(store, digest)
        with _locked(path) as f:
            if store.has_blob(digest):
                report(_progress.ProgressEvent(digest, kind, _progress.EXISTS, size or 0, size or 0))
                return "exists"
            resumed = self._download(repository, digest, size, f, path, report, kind, retries)
            report(_progress.ProgressEvent(digest, kind, _progress.VERIFYING, size or 0, size or 0))
            try:
                store.put_file(path, digest, size)
            except DigestError as exc:
                report(_progress.ProgressEvent(digest, kind, _progress.FAILED, 0, size or 0, "digest mismatch"))
                raise DigestMismatchError(
                    f"blob {digest} from {self.registry}/{repository}: {exc.what}",
                    "the registry (or something between) served content that does not match the digest "
                    "the manifest promised; nothing of it was kept. Pull again; if it persists, do not "
                    "trust this registry or mirror") from None
        report(_progress.ProgressEvent(digest, kind, _progress.DONE, size or 0, size or 0))
        return "resumed" if resumed else "fetched"

    def _download(self, repository: str, digest: str, size: int | None, f: IO[bytes], path: str,
                  report, kind: str, retries: int) -> bool:
        resumed = False
        failures = 0
        while True:
            f.seek(0, os.SEEK_END)
            offset = f.tell()
            if size is not None and offset > size:
                f.truncate(0)
                offset = 0
            if size is not None and offset == size:
                return resumed
            try:
                response = self.open_blob(repository, digest, offset)
            except RegistryError as exc:
                if exc.status == 416 and offset:
                    f.truncate(0)  # the registry refuses our range: start over
                    continue
                raise
            if response.status == 206 and _content_range_start(response.header("Content-Range")) == offset:
                resumed = resumed or offset > 0
                status = _progress.RESUMED
            else:
                if response.status == 206:  # a range we did not ask for: start over
                    response.close()
                    f.truncate(0)
                    continue
                f.truncate(0)
                offset = 0
                status = _progress.DOWNLOADING
            done = offset
            report(_progress.ProgressEvent(digest, kind, status, done, size or 0))
            broke: Exception | None = None
            try:
                while True:
                    try:
                        chunk = response.raw.read(CHUNK)
                    except (http.client.IncompleteRead, http.client.HTTPException, ConnectionError,
                            TimeoutError, OSError) as exc:
                        broke = exc
                        break
                    if not chunk:
                        break
                    done += len(chunk)
                    if size is not None and done > size:
                        f.truncate(0)
                        raise DigestMismatchError(
                            f"blob {digest} from {self.registry}/{repository}: the registry sent more than "
                            f"the {size} bytes the manifest promised",
                            "the blob was tampered with or the manifest is wrong; nothing was kept")
                    f.write(chunk)
                    report(_progress.ProgressEvent(digest, kind, _progress.DOWNLOADING, done, size or 0))
            finally:
                response.close()
            f.flush()
            if broke is None and (size is None or done == size):
                return resumed
            failures += 1
            if failures > retries:
                report(_progress.ProgressEvent(digest, kind, _progress.FAILED, done, size or 0, "interrupted"))
                why = f": {broke}" if broke else ""
                raise RegistryUnreachableError(
                    f"blob {digest}: the transfer broke after {done} of {size} bytes{why}",
                    f"the {done} bytes received are kept in {path}; pull again to resume from there")


    # --- blobs: push ----------------------------------------------------------------------------------
    def start_upload(self, repository: str, *, mount: str | None = None,
                     from_repository: str | None = None) -> tuple[int, str]:
        """POST /blobs/uploads/ (optionally ?mount=&from=): (201, blob url) if mounted, else (202, upload url)."""
        path = f"/v2/{repository}/blobs/uploads/"
        if mount:
            path += "?" + urllib.parse.urlencode({"mount": check_digest(mount), "from": from_repository or ""})
        response = self.transport.request(
            "POST", path, body=b"", headers={"Content-Length": "0"},
            scopes=self.push_scope(repository, from_repository or ""), expect=(201, 202),
            what=f"start upload to {repository}")
        location = response.header("Location")
        if not location:
            raise RegistryError(f"the registry started an upload to {repository} without a Location",
                                "the registry does not follow the distribution spec")
        return response.status, urllib.parse.urljoin(self.transport.url(path), location)

    def mount_blob(self, repository: str, digest: str, from_repository: str) -> bool:
        """Cross-repository mount: link a blob the registry has in another repository. False if it could not."""
        status, location = self.start_upload(repository, mount=digest, from_repository=from_repository)
        if status == 201:
            return True
        self._cancel_upload(repository, location)
        return False

    def _cancel_upload(self, repository: str, location: str) -> None:
        try:
            self.transport.request("DELETE", location, scopes=self.push_scope(repository), expect=(204, 200, 404))
        except RegistryError:
            pass

    def upload_blob(self, repository: str, digest: str, size: int, source: IO[bytes], *,
                    chunk_size: int | None = None, location: str | None = None,
                    progress: _progress.ProgressCallback | None = None, kind: str = "layer") -> str:
        """Upload a blob: monolithic (POST, then PUT ?digest= with the body) when `chunk_size`
        is None or the blob fits in one chunk, else chunked (PATCH with Content-Range, then PUT)."""
        report = progress or (lambda event: None)
        scopes = self.push_scope(repository)
        if location is None:
            _, location = self.start_upload(repository)
        base = {"Content-Type": "application/octet-stream"}
        what = f"upload {digest} to {repository}"
        report(_progress.ProgressEvent(digest, kind, _progress.UPLOADING, 0, size))
        if chunk_size is None or size <= chunk_size:
            body = _ProgressReader(source, lambda n: report(
                _progress.ProgressEvent(digest, kind, _progress.UPLOADING, n, size)))
            response = self.transport.request(
                "PUT", _with_query(location, digest=digest), body=body,
                headers={**base, "Content-Length": str(size)}, scopes=scopes, expect=(201,), what=what)
        else:
            offset = 0
            while offset < size:
                data = source.read(min(chunk_size, size - offset))
                if not data:
                    raise RegistryError(f"{what}: the local blob ended at {offset} of {size} bytes",
                                        "the store's copy is truncated; verify it with Store.verify()")
                end = offset + len(data) - 1
                response = self.transport.request(
                    "PATCH", location, body=data, scopes=scopes, expect=(202,), what=what,
                    headers={**base, "Content-Length": str(len(data)), "Content-Range": f"{offset}-{end}"})
                acknowledged = response.header("Range")
                if acknowledged and acknowledged.strip() not in (f"0-{end}", f"bytes=0-{end}"):
                    raise RegistryError(f"{what}: the registry acknowledged {acknowledged}, expected 0-{end}",
                                        "chunks got out of step; start the upload again")
                location = urllib.parse.urljoin(location, response.header("Location") or location)
                offset = end + 1
                report(_progress.ProgressEvent(digest, kind, _progress.UPLOADING, offset, size))
            response = self.transport.request(
                "PUT", _with_query(location, digest=digest), body=b"", headers={**base, "Content-Length": "0"},
                scopes=scopes, expect=(201,), what=what)
        claimed = response.header("Docker-Content-Digest")
        if claimed and claimed != digest:
            raise DigestMismatchError(f"{what}: the registry stored it as {claimed}",
                                      "the bytes sent differ from the digest; verify the local store")
        return "uploaded"

    def push_blob(self, repository: str, digest: str, size: int, store: Store, *,
                  chunk_size: int | None = None, mount_from: str | None = None,
                  progress: _progress.ProgressCallback | None = None, kind: str = "layer") -> str:
        """Make the registry have a blob: "exists" (HEAD found it), "mounted" or "uploaded"."""
        report = progress or (lambda event: None)
        scopes = self.push_scope(repository, mount_from or "")
        if self.blob_size(repository, digest, scopes=scopes) is not None:
            report(_progress.ProgressEvent(digest, kind, _progress.EXISTS, size, size))
            return "exists"
        location = None
        if mount_from and mount_from != repository:
            status, location = self.start_upload(repository, mount=digest, from_repository=mount_from)
            if status == 201:
                report(_progress.ProgressEvent(digest, kind, _progress.MOUNTED, size, size, mount_from))
                return "mounted"
        with store.open_blob(digest) as source:
            self.upload_blob(repository, digest, size, source, chunk_size=chunk_size, location=location,
                             progress=progress, kind=kind)
        report(_progress.ProgressEvent(digest, kind, _progress.PUSHED, size, size))
        return "uploaded"

    # --- listings ---------------------------------------------------------------------------------------
    def _paged(self, path: str, key: str, scopes: tuple[str, ...]) -> list[str]:
        items: list[str] = []
        url: str | None = path
        while url:
            response = self.transport.request("GET", url, scopes=scopes, what=f"list {path}")
            items += json.loads(response.data).get(key) or []  # type: ignore[attr-defined]
            link = response.header("Link") or ""
            m = re.match(r'\s*<([^>]+)>\s*;\s*rel="?next"?', link)
            url = urllib.parse.urljoin(self.transport.url(path), m.group(1)) if m else None
        return items

    def tags(self, repository: str) -> list[str]:
        """GET /v2/<name>/tags/list (all pages)."""
        return self._paged(f"/v2/{repository}/tags/list", "tags", self.pull_scope(repository))

    def catalog(self) -> list[str]:
        """GET /v2/_catalog: the repositories (registries may restrict or disable this)."""
        return self._paged("/v2/_catalog", "repositories", ("registry:catalog:*",))


class _locked:
    """Open and flock a partial-download file, so two pulls of one blob don't interleave."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.f: IO[bytes] | None = None

    def __enter__(self) -> IO[bytes]:
        while True:
            f = open(self.path, "a+b")
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                same = os.fstat(f.fileno()).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self.f = f
                return f
            f.close()  # another pull finished (or discarded) it while we waited: reopen

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        assert self.f is not None
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            st = None  # put_file moved it into the store, or deleted it as bad
        ours = st is not None and st.st_ino == os.fstat(self.f.fileno()).st_ino
        # keep an interrupted download to resume it; drop an empty or proven-bad one
        if ours and (exc_type is None or isinstance(exc, DigestError) or st.st_size == 0):
            os.unlink(self.path)
        self.f.close()
