"""Layers: tar archives of filesystem changes, plain or gzip-compressed.

Two digests per layer, easy to mix up:
- the *blob digest* (in the manifest) is the sha256 of the bytes stored and
  transferred — the compressed tar for a gzip layer;
- the *diff_id* (in the config's rootfs.diff_ids) is the sha256 of the
  uncompressed tar. It names the content, whatever the compression.

`write_layer` turns a list of changes (labkit.images.changes) into a tar.
It is deterministic: entries sorted, names and owners numeric, an optional
fixed mtime and owner, and a gzip header without name or time — so the same
tree always gives the same digests, on any machine with the same zlib.
"""
from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import os
import stat
import tarfile
import tempfile
import zlib
from typing import IO, Any, Callable, Iterable

from ..errors import LabkitError
from . import changes as ch
from .model import OCI_LAYER, OCI_LAYER_GZIP, Descriptor, layer_compression
from .store import Store
from .unpack import FLAT, OPAQUE_MARKER, WHITEOUT, ApplyReport, apply_tar

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
XATTRS_KEPT = ("security.capability",)  # plus every user.* attribute
CHUNK = 1 << 20
Owner = tuple[int, int] | Callable[[str], "tuple[int, int] | None"] | None  # see write_layer


@dataclasses.dataclass(frozen=True)
class Layer:
    digest: str      # sha256 of the blob as stored (compressed)
    diff_id: str     # sha256 of the uncompressed tar
    size: int        # blob size in bytes
    media_type: str = OCI_LAYER_GZIP

    def descriptor(self) -> Descriptor:
        return Descriptor(self.media_type, self.digest, self.size)

    def __repr__(self) -> str:
        return f"Layer(digest={self.digest[:19]}…, diff_id={self.diff_id[:19]}…, size={self.size})"


# --- hashing streams ----------------------------------------------------------------------------
class HashingWriter(io.RawIOBase):
    """Passes writes on to `out` while hashing and counting them."""

    def __init__(self, out: IO[bytes]) -> None:
        self.out, self.hash, self.count = out, hashlib.sha256(), 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        data = bytes(data)
        self.hash.update(data)
        self.count += len(data)
        self.out.write(data)
        return len(data)

    @property
    def digest(self) -> str:
        return "sha256:" + self.hash.hexdigest()


class HashingReader(io.RawIOBase):
    """Reads from `src` while hashing and counting what passed."""

    def __init__(self, src: IO[bytes]) -> None:
        self.src, self.hash, self.count = src, hashlib.sha256(), 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.src.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        self.hash.update(data)
        self.count += n
        return n

    def drain(self) -> None:
        """Read to the end: tar readers stop at the end marker, the digest covers all bytes."""
        while self.read(CHUNK):
            pass

    @property
    def digest(self) -> str:
        return "sha256:" + self.hash.hexdigest()


def decompressed(raw: IO[bytes], compression: str | None = "auto") -> IO[bytes]:
    """The uncompressed stream of a layer blob; 'auto' sniffs gzip/zstd by magic bytes."""
    if compression == "auto":
        head = raw.peek(4)[:4] if hasattr(raw, "peek") else b""
        compression = "gzip" if head.startswith(GZIP_MAGIC) else "zstd" if head.startswith(ZSTD_MAGIC) else None
    if compression == "gzip":
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    if compression == "zstd":
        try:
            import zstandard  # type: ignore[import-not-found]
        except ImportError:
            raise LabkitError("the layer is zstd-compressed and the zstandard module is missing",
                              "pip install zstandard (into labkit's venv), or use a gzip image") from None
        return zstandard.ZstdDecompressor().stream_reader(raw)
    return raw


# --- reading a stored layer ---------------------------------------------------------------------
def open_layer(store: Store, descriptor: Descriptor | dict[str, Any]) -> HashingReader:
    """The uncompressed tar of a stored layer, hashed as it is read (compare `.digest` to the diff_id)."""
    desc = descriptor if isinstance(descriptor, Descriptor) else Descriptor.from_dict(descriptor)
    compression = layer_compression(desc.media_type) if desc.media_type else "auto"
    raw = io.BufferedReader(store.open_blob(desc.digest), CHUNK)  # type: ignore[arg-type]
    return HashingReader(decompressed(raw, compression))


def apply_layer(store: Store, descriptor: Descriptor | dict[str, Any], root: str, mode: str = FLAT,
                diff_id: str | None = None) -> ApplyReport:
    """Apply a stored layer onto `root` (see labkit.images.unpack for the modes and the checks).

    With `diff_id`, the uncompressed content must hash to it, or a LabkitError
    is raised (the caller, e.g. LayerDirs, then throws the half-made tree away).
    """
    reader = open_layer(store, descriptor)
    digest = descriptor.digest if isinstance(descriptor, Descriptor) else descriptor.get("digest")
    try:
        report = apply_tar(reader, root, mode)  # type: ignore[arg-type]
        reader.drain()
    except LabkitError:
        raise
    except (gzip.BadGzipFile, EOFError, zlib.error, tarfile.TarError) as err:  # not a tar, bad gzip, cut short
        raise LabkitError(f"layer {digest} cannot be read: {type(err).__name__}: {err}",
                          "the blob is corrupt or not a layer; remove the image and pull/import it again") from None
    finally:
        reader.src.close()
    if diff_id and reader.digest != diff_id:
        raise LabkitError(f"layer content hashes to {reader.digest}, the image config says {diff_id}",
                          "the image is corrupt or was tampered with; remove and pull/import it again")
    return report


def list_layer(store: Store, descriptor: Descriptor | dict[str, Any]) -> list[tarfile.TarInfo]:
    """The entries of a stored layer, in order — a layer is just a tarball."""
    reader = open_layer(store, descriptor)
    try:
        with tarfile.open(fileobj=reader, mode="r|") as tar:  # type: ignore[call-overload]
            return list(tar)
    finally:
        reader.src.close()


# --- writing a layer -------------------------------------------------------------------------
def write_layer(changes: Iterable[ch.Change], source: str, out: IO[bytes], compress: bool = True,
                mtime: int | None = None, owner: Owner = None) -> tuple[str, str, int]:
    """Write `changes` (paths relative to `source`) as a tar layer to `out`.

    Returns (blob digest, diff_id, blob size). `mtime`/`owner`, when given,
    replace every entry's own, for reproducible layers; `owner` may also be a
    function of the entry's path (None: keep the file's owner).
    """
    blob = HashingWriter(out)
    zipped = gzip.GzipFile(filename="", mode="wb", fileobj=blob, mtime=0, compresslevel=6) if compress else None
    plain = HashingWriter(zipped if zipped else blob)  # type: ignore[arg-type]
    with tarfile.open(fileobj=plain, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
        writer = _TarWriter(tar, source, mtime, owner)
        for change in sorted(changes, key=_entry_key):
            writer.add(change)
    if zipped:
        zipped.close()
    return blob.digest, plain.digest, blob.count


def _entry_key(change: ch.Change) -> list[str]:
    parent, _, name = change.path.rpartition("/")
    if change.kind == ch.DELETE:
        name = WHITEOUT + name
    return (parent.split("/") if parent else []) + [name]


class _TarWriter:
    def __init__(self, tar: tarfile.TarFile, source: str, mtime: int | None, owner: Owner):
        self.tar, self.source, self.mtime, self.owner = tar, source, mtime, owner
        self.inodes: dict[tuple[int, int], str] = {}  # hard links within the layer
        self.dirs_written: set[str] = set()

    def add(self, change: ch.Change) -> None:
        parent, _, name = change.path.rpartition("/")
        if change.kind == ch.DELETE:
            self._marker(f"{parent}/{WHITEOUT}{name}" if parent else WHITEOUT + name)
            return
        if change.kind == ch.OPAQUE:
            if change.path not in self.dirs_written:
                self._entry(change.path)
            self._marker(f"{change.path}/{OPAQUE_MARKER}")
            return
        if change.path not in self.dirs_written:
            self._entry(change.path)

    def _marker(self, name: str) -> None:
        """Whiteouts are empty regular files whose name carries the meaning."""
        info = tarfile.TarInfo(name)
        info.mode, info.mtime = 0o644, self.mtime or 0
        self.tar.addfile(info)

    def _entry(self, rel: str) -> None:
        path = os.path.join(self.source, rel)
        st = os.lstat(path)
        info = tarfile.TarInfo(rel)
        info.mode = stat.S_IMODE(st.st_mode)
        fixed = self.owner(rel) if callable(self.owner) else self.owner
        info.uid, info.gid = fixed if fixed else (st.st_uid, st.st_gid)
        info.uname = info.gname = ""  # numeric owners only: names differ between hosts
        info.mtime = self.mtime if self.mtime is not None else int(st.st_mtime)
        info.pax_headers = self._xattrs(path)
        if stat.S_ISDIR(st.st_mode):
            info.type = tarfile.DIRTYPE
            self.dirs_written.add(rel)
            self.tar.addfile(info)
        elif stat.S_ISREG(st.st_mode):
            key = (st.st_dev, st.st_ino)
            if st.st_nlink > 1 and key in self.inodes:
                info.type, info.linkname = tarfile.LNKTYPE, self.inodes[key]
                self.tar.addfile(info)
                return
            self.inodes[key] = rel
            info.size = st.st_size
            with open(path, "rb") as f:
                self.tar.addfile(info, f)
        elif stat.S_ISLNK(st.st_mode):
            info.type, info.linkname = tarfile.SYMTYPE, os.readlink(path)
            self.tar.addfile(info)
        elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            info.type = tarfile.CHRTYPE if stat.S_ISCHR(st.st_mode) else tarfile.BLKTYPE
            info.devmajor, info.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
            self.tar.addfile(info)
        elif stat.S_ISFIFO(st.st_mode):
            info.type = tarfile.FIFOTYPE
            self.tar.addfile(info)
        # sockets cannot be archived; like tar, skip them

    @staticmethod
    def _xattrs(path: str) -> dict[str, str]:
        """Capabilities and user.* xattrs travel in PAX headers; overlayfs' own never do."""
        try:
            names = sorted(os.listxattr(path, follow_symlinks=False))
        except OSError:
            return {}
        out = {}
        for attr in names:
            if attr in XATTRS_KEPT or (attr.startswith("user.") and not attr.startswith("user.overlay.")):
                value = os.getxattr(path, attr, follow_symlinks=False)
                out["SCHILY.xattr." + attr] = value.decode("utf-8", "surrogateescape")
        return out


# --- layers into the store ------------------------------------------------------------------------
def create_layer(store: Store, changes: Iterable[ch.Change], source: str, compress: bool = True,
                 mtime: int | None = None, owner: Owner = None) -> Layer:
    """Write a layer from `changes` under `source` straight into the blob store."""
    fd, tmp = tempfile.mkstemp(dir=os.path.join(store.root, "blobs"), prefix=".layer-")
    try:
        with os.fdopen(fd, "wb") as out:
            digest, diff_id, size = write_layer(changes, source, out, compress, mtime, owner)
            out.flush()
        store.put_file(tmp, digest, size)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return Layer(digest, diff_id, size, OCI_LAYER_GZIP if compress else OCI_LAYER)


def diff_layer(store: Store, old: str | None, new: str, compress: bool = True, mtime: int | None = None,
               owner: tuple[int, int] | None = None, compare_mtime: bool = True) -> Layer:
    """The layer that turns tree `old` into tree `new` (old=None: all of `new`)."""
    return create_layer(store, ch.diff_trees(old, new, compare_mtime), new, compress, mtime, owner)


def import_tar(store: Store, path: str) -> Layer:
    """Store a tar file (plain or gzip) as a gzip layer, computing its diff_id.

    The content is not checked here; it is checked entry by entry when the
    layer is applied.
    """
    with open(path, "rb") as f:
        raw = io.BufferedReader(f, CHUNK)  # type: ignore[arg-type]
        already_gzip = raw.peek(2)[:2] == GZIP_MAGIC
        if already_gzip:  # keep the blob as it is; only the diff_id needs decompressing
            reader = HashingReader(gzip.GzipFile(fileobj=raw, mode="rb"))  # type: ignore[arg-type]
            reader.drain()
            digest = store.put_stream(file_chunks(path))
            return Layer(digest, reader.digest, os.path.getsize(path), OCI_LAYER_GZIP)
    fd, tmp = tempfile.mkstemp(dir=os.path.join(store.root, "blobs"), prefix=".layer-")
    try:
        with os.fdopen(fd, "wb") as out, open(path, "rb") as src:
            blob = HashingWriter(out)
            plain = HashingWriter(gzip.GzipFile(filename="", mode="wb", fileobj=blob, mtime=0))  # type: ignore[arg-type]
            for chunk in iter(lambda: src.read(CHUNK), b""):
                plain.write(chunk)
            plain.out.close()
        store.put_file(tmp, blob.digest, blob.count)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return Layer(blob.digest, plain.digest, blob.count, OCI_LAYER_GZIP)


def file_chunks(path: str) -> Iterable[bytes]:
    with open(path, "rb") as f:
        yield from iter(lambda: f.read(CHUNK), b"")
