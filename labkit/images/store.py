"""A content-addressed blob store in the OCI image layout, shared by all images.

    <root>/oci-layout                {"imageLayoutVersion": "1.0.0"}
    <root>/index.json                the image index: one manifest descriptor per tag
    <root>/blobs/sha256/<hex>        every blob (layers, configs, manifests), by digest

A blob enters the store only after its sha256 (and size, when known) match
what the caller expected: a tampered or truncated blob is rejected, and
nothing of it is kept. Writes go to a temp file and are renamed into place.
Tags are mutable names in index.json (annotation org.opencontainers.image.ref.name);
digests never change.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import tempfile
from typing import IO, Any, Iterable, Iterator

from ..errors import LabkitError

DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
REF_NAME = "org.opencontainers.image.ref.name"
MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
CHUNK = 1 << 20


class DigestError(LabkitError):
    """Content does not match its digest or size."""


def check_digest(digest: str) -> str:
    if not DIGEST_RE.match(digest or ""):
        raise DigestError(f"invalid digest {digest!r}", "a digest is 'sha256:' followed by 64 lowercase hex digits")
    return digest


def digest_bytes(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical_json(obj: Any) -> bytes:
    """Stable bytes for a JSON document, so the same content gets the same digest."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def _check_content(digest: str, total: int, expected: str | None, size: int | None) -> None:
    """Refuse content whose size or digest is not what the caller was promised."""
    if size is not None and total != size:
        raise DigestError(f"content is {total} bytes, expected {size}",
                          "the transfer was truncated or padded; nothing was stored — fetch it again")
    if expected and digest != expected:
        raise DigestError(f"content digest {digest} does not match the expected {expected}",
                          "the blob was corrupted or tampered with; nothing was stored — fetch it again")


class Store:
    """An OCI image layout directory used as labkit's blob store."""

    def __init__(self, root: str) -> None:
        self.root = root
        os.makedirs(os.path.join(root, "blobs", "sha256"), exist_ok=True)
        layout = os.path.join(root, "oci-layout")
        if not os.path.exists(layout):
            self._atomic_write(layout, b'{"imageLayoutVersion":"1.0.0"}')
        if not os.path.exists(self._index_path):
            with self._index_locked():  # re-checked: another process may have tagged meanwhile
                if not os.path.exists(self._index_path):
                    self._write_index({"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": []})

    def __repr__(self) -> str:
        return f"Store({self.root!r})"

    # --- blobs ---
    def blob_path(self, digest: str) -> str:
        algo, hexpart = check_digest(digest).split(":", 1)
        return os.path.join(self.root, "blobs", algo, hexpart)

    def has_blob(self, digest: str) -> bool:
        return os.path.exists(self.blob_path(digest))

    def get_blob(self, digest: str) -> bytes:
        try:
            with open(self.blob_path(digest), "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise LabkitError(f"blob {digest} is not in the store {self.root}",
                              "pull or import the image that contains it") from None

    def open_blob(self, digest: str) -> IO[bytes]:
        return open(self.blob_path(digest), "rb")

    def put_blob(self, data: bytes, expected: str | None = None) -> str:
        """Store bytes; if `expected` is given the digest must match it."""
        return self.put_stream(iter([data]), expected, len(data) if expected else None)

    def put_stream(self, chunks: Iterable[bytes], expected: str | None = None,
                   size: int | None = None) -> str:
        """Store a stream of chunks, verifying digest and size before it becomes visible."""
        if expected:
            check_digest(expected)
        h = hashlib.sha256()
        total = 0
        fd, tmp = tempfile.mkstemp(dir=os.path.join(self.root, "blobs"), prefix=".incoming-")
        try:
            with os.fdopen(fd, "wb") as f:
                for chunk in chunks:
                    h.update(chunk)
                    total += len(chunk)
                    f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
            digest = "sha256:" + h.hexdigest()
            _check_content(digest, total, expected, size)
            os.replace(tmp, self.blob_path(digest))
            return digest
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def put_file(self, path: str, expected: str, size: int | None = None) -> str:
        """Move a file already written on this filesystem (a finished download) into the
        store, after its digest and size match; on a mismatch the file is deleted."""
        check_digest(expected)
        try:
            h = hashlib.sha256()
            total = 0
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(CHUNK), b""):
                    h.update(chunk)
                    total += len(chunk)
                os.fsync(f.fileno())
            digest = "sha256:" + h.hexdigest()
            _check_content(digest, total, expected, size)
            os.replace(path, self.blob_path(digest))
            return digest
        except BaseException:
            if os.path.exists(path):
                os.unlink(path)
            raise

    def put_json(self, obj: Any) -> tuple[str, int]:
        data = canonical_json(obj)
        return self.put_blob(data), len(data)

    def get_json(self, digest: str) -> Any:
        return json.loads(self.get_blob(digest))

    def blobs(self) -> Iterator[str]:
        directory = os.path.join(self.root, "blobs", "sha256")
        for name in sorted(os.listdir(directory)):
            if not name.startswith("."):
                yield "sha256:" + name

    def verify(self, digest: str) -> bool:
        """Recompute a stored blob's digest (detects on-disk tampering)."""
        h = hashlib.sha256()
        with self.open_blob(digest) as f:
            for chunk in iter(lambda: f.read(CHUNK), b""):
                h.update(chunk)
        return "sha256:" + h.hexdigest() == digest

    # --- tags (index.json) ---
    @property
    def _index_path(self) -> str:
        return os.path.join(self.root, "index.json")

    def index(self) -> dict[str, Any]:
        with open(self._index_path) as f:
            return json.load(f)

    def _write_index(self, index: dict[str, Any]) -> None:
        self._atomic_write(self._index_path, json.dumps(index, indent=2).encode())

    @contextlib.contextmanager
    def _index_locked(self) -> Iterator[None]:
        """Tagging reads, edits and rewrites index.json: one writer at a time, across processes
        and threads, or two concurrent tags lose one. The lock is a flock on the layout
        directory itself, so the layout gains no lock file."""
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def tag(self, name: str, descriptor: dict[str, Any]) -> None:
        """Point tag `name` at a manifest (or index) descriptor; tags move, digests don't."""
        with self._index_locked():
            index = self.index()
            manifests = [m for m in index["manifests"] if m.get("annotations", {}).get(REF_NAME) != name]
            entry = dict(descriptor)
            entry["annotations"] = {**descriptor.get("annotations", {}), REF_NAME: name}
            manifests.append(entry)
            index["manifests"] = manifests
            self._write_index(index)

    def untag(self, name: str) -> None:
        with self._index_locked():
            index = self.index()
            index["manifests"] = [m for m in index["manifests"] if m.get("annotations", {}).get(REF_NAME) != name]
            self._write_index(index)

    def resolve(self, name: str) -> dict[str, Any]:
        """The descriptor a tag points at."""
        for m in self.index()["manifests"]:
            if m.get("annotations", {}).get(REF_NAME) == name:
                return m
        raise LabkitError(f"no image tagged {name!r} in {self.root}",
                          "list tags with Store.tags(), or pull/build the image first")

    def tags(self) -> dict[str, str]:
        return {m["annotations"][REF_NAME]: m["digest"] for m in self.index()["manifests"]
                if REF_NAME in m.get("annotations", {})}

    def _atomic_write(self, path: str, data: bytes) -> None:
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
