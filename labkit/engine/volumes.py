"""Named volumes, laid out as Docker's local driver keeps them.

    <root>/<name>/_data          the volume's files: what a container sees at the mount point
    <root>/<name>/volume.json    Name, Driver, Mountpoint, CreatedAt, Labels, Options, Scope (the
                                 fields of `docker volume inspect`) + labkit's own: anonymous, populated
    <root>/<name>/.lock          flock: one copy-up into this volume at a time
    <root>/.volumes.lock         flock: create, remove, prune — so a name has one volume

<root> is settings.data_root()/volumes unless the caller gives another. A
volume appears by renaming a finished temp dir (.new-*) into place and goes
by renaming it to .removing-* first, so a crash never leaves half a volume
under a name (`cleanup` sweeps the leftovers). Names that start with "." are
not volume names, so these never clash.

Copy-up. A container that mounts an empty volume over a directory of its
image sees the image's files there: the engine calls `populate_from_image`,
which copies that directory of the image's merged layers into the volume
once, keeping modes, owners, times, symlinks (never followed), hardlinks,
device nodes, fifos and xattrs. The volume is then marked populated, even if
nothing was copied, so a volume emptied later stays empty (podman's
NeedsCopyUp; moby copies into any empty volume at each container create).

The merged view needs an overlay mount, and nothing may be mounted in the
caller's mount namespace: `image_dir_view` starts a helper process
(`python -m labkit.engine.volumes`) that unshares a mount namespace, makes
it private, mounts the layers read-only (lowerdirs only, no upper dir) and
waits; the caller reads the view through /proc/<helper>/root, a door into
the helper's mount table. When the helper exits, its namespace and mount are
gone with it.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import shutil
import stat
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

from labkit import settings
from labkit.engine.errors import Conflict, EngineError, Invalid, NotFound
from labkit.engine.mounts import check_volume_name
from labkit.engine.records import _flock, _fsync_dir, write_json_atomic
from labkit.engine.timefmt import now_ns, rfc3339_nano
from labkit.errors import LabkitError

DATA_DIR, META_FILE, LOCK_FILE, NAMES_LOCK = "_data", "volume.json", ".lock", ".volumes.lock"
DRIVER = SCOPE = "local"
ANONYMOUS_LABEL = "com.docker.volume.anonymous"   # Docker >= 23 labels anonymous volumes (inspect shows it)
_NS = 1_000_000_000
_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class Volume:
    """One volume as volume.json holds it."""

    name: str
    mountpoint: str                 # the _data dir
    created_at: str                 # RFC 3339, whole seconds (as Docker's CreatedAt)
    labels: dict[str, str] = field(default_factory=dict)
    options: dict[str, str] = field(default_factory=dict)
    anonymous: bool = False
    populated: bool = False

    def inspect(self) -> dict[str, Any]:
        """The object `docker volume inspect` prints."""
        return {"CreatedAt": self.created_at, "Driver": DRIVER, "Labels": dict(self.labels),
                "Mountpoint": self.mountpoint, "Name": self.name, "Options": dict(self.options), "Scope": SCOPE}

    def to_json(self) -> dict[str, Any]:
        return {**self.inspect(), "anonymous": self.anonymous, "populated": self.populated}

    @classmethod
    def from_json(cls, d: dict[str, Any], mountpoint: str) -> "Volume":
        # The mountpoint comes from where the volume is now, not from the file: data roots move.
        return cls(name=d["Name"], mountpoint=mountpoint, created_at=d.get("CreatedAt", ""),
                   labels=dict(d.get("Labels") or {}), options=dict(d.get("Options") or {}),
                   anonymous=bool(d.get("anonymous")), populated=bool(d.get("populated")))

    def __repr__(self) -> str:
        kind = "anonymous " if self.anonymous else ""
        return f"<Volume {kind}{self.name[:12] if self.anonymous else self.name} {self.mountpoint}>"


def validate_name(name: str) -> str:
    """Docker's volume name rule, or Invalid with a hint (shared with -v parsing)."""
    return check_volume_name(name)


def _is_name(name: str) -> bool:
    try:
        check_volume_name(name)
    except Invalid:
        return False
    return True


class VolumeStore:
    """Every volume under one directory."""

    def __init__(self, root: str | None = None) -> None:
        self.root = os.path.abspath(root or os.path.join(settings.data_root(), "volumes"))

    def __repr__(self) -> str:
        return f"<VolumeStore {self.root}>"

    # -- paths and locks ---------------------------------------------------------------------
    def _dir(self, name: str) -> str:
        return os.path.join(self.root, name)

    def path(self, name: str) -> str:
        """The volume's _data dir: what gets mounted (NotFound if there is no such volume)."""
        return self.get(name).mountpoint

    def _names_lock(self) -> contextlib.AbstractContextManager[None]:
        os.makedirs(self.root, 0o701, exist_ok=True)  # as Docker: others may pass, not list
        return _flock(os.path.join(self.root, NAMES_LOCK))

    @contextlib.contextmanager
    def _volume_lock(self, name: str) -> Iterator[None]:
        try:
            lock = _flock(os.path.join(self._dir(name), LOCK_FILE))
            lock.__enter__()
        except FileNotFoundError:  # removed meanwhile
            raise NotFound(f"no such volume: {name}") from None
        try:
            yield
        finally:
            lock.__exit__(None, None, None)

    # -- reading -----------------------------------------------------------------------------
    def get(self, name: str) -> Volume:
        if not _is_name(name):  # never build a path from "../x"
            raise NotFound(f"no such volume: {name}")
        directory = self._dir(name)
        try:
            with open(os.path.join(directory, META_FILE)) as f:
                meta = json.load(f)
        except FileNotFoundError:
            raise NotFound(f"no such volume: {name}") from None
        return Volume.from_json(meta, os.path.join(directory, DATA_DIR))

    def exists(self, name: str) -> bool:
        with contextlib.suppress(NotFound):
            self.get(name)
            return True
        return False

    def list(self) -> list[Volume]:
        """Every volume, by name (as `docker volume ls`)."""
        if not os.path.isdir(self.root):
            return []
        out = []
        for name in sorted(os.listdir(self.root)):
            with contextlib.suppress(NotFound):
                out.append(self.get(name))
        return out

    def inspect(self, name: str) -> dict[str, Any]:
        return self.get(name).inspect()

    # -- writing -----------------------------------------------------------------------------
    def create(self, name: str | None = None, labels: dict[str, str] | None = None,
               anonymous: bool = False) -> Volume:
        """A new volume, or the existing one of that name (as Docker). No name: 64 random hex digits."""
        name = validate_name(name) if name is not None else secrets.token_hex(32)
        labels = dict(labels or {})
        if anonymous:
            labels.setdefault(ANONYMOUS_LABEL, "")
        with self._names_lock():
            with contextlib.suppress(NotFound):
                return self.get(name)
            return self._make(name, labels, anonymous)

    def _make(self, name: str, labels: dict[str, str], anonymous: bool) -> Volume:
        tmp = tempfile.mkdtemp(prefix=".new-", dir=self.root)
        try:
            os.chmod(tmp, 0o701)
            os.mkdir(os.path.join(tmp, DATA_DIR))
            os.chmod(os.path.join(tmp, DATA_DIR), 0o755)  # not the umask's: containers' users must reach it
            created = rfc3339_nano(now_ns() // _NS * _NS)
            vol = Volume(name, os.path.join(self._dir(name), DATA_DIR), created, labels, {}, anonymous)
            write_json_atomic(os.path.join(tmp, META_FILE), vol.to_json())
            os.rename(tmp, self._dir(name))
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _fsync_dir(self.root)
        return vol

    def remove(self, name: str, users: Iterable[str] = (), force: bool = False) -> str:
        """Delete a volume and its data. `users`: ids of containers using it (the engine knows them).

        In use -> Conflict, even with force (as Docker); force only makes a missing volume no error.
        """
        users = list(users)
        with self._names_lock():
            if not self.exists(name):
                if force:
                    return name
                raise NotFound(f"no such volume: {name}")
            if users:
                raise Conflict(f"remove {name}: volume is in use - [{', '.join(users)}]",
                               "remove those containers first (`labkit rm`), then the volume")
            doomed = self._detach(name)
        shutil.rmtree(doomed, ignore_errors=True)
        return name

    def _detach(self, name: str) -> str:
        """Rename the volume away (under the names lock): it and its name vanish in one step."""
        with self._volume_lock(name):  # waits for a copy-up in progress
            doomed = os.path.join(self.root, f".removing-{name}")
            os.rename(self._dir(name), doomed)
        _fsync_dir(self.root)
        return doomed

    def prune(self, in_use: set[str], all: bool = False) -> list[str]:
        """Remove unused volumes: anonymous ones only, or every one with all=True (Docker >= 23)."""
        doomed: list[tuple[str, str]] = []
        with self._names_lock():
            for vol in self.list():
                if vol.name not in in_use and (all or vol.anonymous):
                    doomed.append((vol.name, self._detach(vol.name)))
        for _, path in doomed:
            shutil.rmtree(path, ignore_errors=True)
        return [name for name, _ in doomed]

    def cleanup(self) -> list[str]:
        """Finish what a crash interrupted: half-made (.new-*) or half-removed (.removing-*) volumes."""
        gone: list[str] = []
        if not os.path.isdir(self.root):
            return gone
        with self._names_lock():
            for entry in os.listdir(self.root):
                if entry.startswith((".new-", ".removing-")):
                    shutil.rmtree(os.path.join(self.root, entry), ignore_errors=True)
                    gone.append(entry)
        return gone

    # -- copy-up -----------------------------------------------------------------------------
    def populate(self, volume: Volume | str, source_dir: str | None) -> bool:
        """Copy the tree at `source_dir` into the volume if it was never populated and is empty.

        Marks the volume populated either way (None or a missing source: nothing to copy).
        Returns whether anything was copied. A failed copy is undone, so a retry starts afresh.
        """
        name = volume.name if isinstance(volume, Volume) else volume
        with self._volume_lock(name):
            vol = self.get(name)  # fresh from disk: another container may have populated it
            if vol.populated:
                return False
            copied = False
            if source_dir is not None and _is_real_dir(source_dir) and not os.listdir(vol.mountpoint):
                _copy_or_undo(source_dir, vol)
                copied = True
            write_json_atomic(os.path.join(self._dir(name), META_FILE),
                              {**vol.to_json(), "populated": True})
        return copied

    def populate_from_image(self, volume: Volume | str, lowers_top_first: list[str], path: str) -> bool:
        """Copy-up from an image: its layers (overlay lowerdirs, top first) merged, at `path`."""
        vol = self.get(volume.name if isinstance(volume, Volume) else volume)
        if vol.populated:
            return False
        if os.listdir(vol.mountpoint):  # something there already: no copy, and no helper to start
            return self.populate(vol, None)
        with image_dir_view(lowers_top_first, path) as source:
            return self.populate(vol, source)


# --- copying a tree ---------------------------------------------------------------------------------
def _is_real_dir(path: str) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def _copy_or_undo(source_dir: str, vol: Volume) -> None:
    try:
        copy_tree(source_dir, vol.mountpoint)
    except BaseException as err:
        _empty(vol.mountpoint)
        if isinstance(err, OSError):
            raise EngineError(f"copying {source_dir} into volume {vol.name} failed: {err}",
                              "check free space on the data root; the volume was left empty") from err
        raise


def _empty(directory: str) -> None:
    for entry in os.scandir(directory):
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)


def copy_tree(src: str, dst: str) -> None:
    """Copy the contents of directory `src` into the existing directory `dst`, then src's own
    metadata onto dst (as containerd's fs.CopyDir, which Docker uses for copy-up).

    Works on directory fds with O_NOFOLLOW and creates with O_EXCL, so no symlink — in the
    source or one appearing in the destination meanwhile — is ever followed.
    """
    sfd, dfd = os.open(src, _O_DIR), os.open(dst, _O_DIR)
    try:
        _TreeCopy(dfd).directory(sfd, dfd, "")
        _finish_fd(dfd, os.fstat(sfd), _xattrs(sfd))
    finally:
        os.close(sfd)
        os.close(dfd)


class _TreeCopy:
    def __init__(self, root_fd: int) -> None:
        self.root_fd = root_fd
        self.links: dict[tuple[int, int], str] = {}   # (dev, ino) -> first copy, relative to root

    def directory(self, sfd: int, dfd: int, rel: str) -> None:
        with os.scandir(sfd) as it:
            entries = [(e.name, e.stat(follow_symlinks=False)) for e in it]
        for name, st in entries:
            self.entry(sfd, dfd, name, st, f"{rel}/{name}" if rel else name)

    def entry(self, sfd: int, dfd: int, name: str, st: os.stat_result, rel: str) -> None:
        if stat.S_ISDIR(st.st_mode):
            os.mkdir(name, 0o700, dir_fd=dfd)
            child_s, child_d = os.open(name, _O_DIR, dir_fd=sfd), os.open(name, _O_DIR, dir_fd=dfd)
            try:
                self.directory(child_s, child_d, rel)
                _finish_fd(child_d, st, _xattrs(child_s))  # after its entries: their creation changed its times
            finally:
                os.close(child_s)
                os.close(child_d)
            return
        key = (st.st_dev, st.st_ino)
        if st.st_nlink > 1 and key in self.links:
            os.link(self.links[key], name, src_dir_fd=self.root_fd, dst_dir_fd=dfd, follow_symlinks=False)
            return
        if stat.S_ISREG(st.st_mode):
            _copy_file(sfd, dfd, name, st)
        elif stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(name, dir_fd=sfd), name, dir_fd=dfd)
            _finish_at(dfd, name, st, _xattrs(_at(sfd, name)), chmod=False)
        else:  # character/block device, fifo, socket: the node itself, never opened
            os.mknod(name, stat.S_IFMT(st.st_mode) | 0o600, st.st_rdev, dir_fd=dfd)
            _finish_at(dfd, name, st, _xattrs(_at(sfd, name)), chmod=True)
        if st.st_nlink > 1:
            self.links[key] = rel


def _copy_file(sfd: int, dfd: int, name: str, st: os.stat_result) -> None:
    src = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=sfd)
    try:
        dst = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dfd)
        try:
            _copy_data(src, dst)
            _finish_fd(dst, st, _xattrs(src))
        finally:
            os.close(dst)
    finally:
        os.close(src)


def _copy_data(src: int, dst: int) -> None:
    try:
        while os.sendfile(dst, src, None, 1 << 30):
            pass
    except OSError as err:
        if err.errno not in (errno.EINVAL, errno.ENOSYS):
            raise
        while chunk := os.read(src, 1 << 20):  # sendfile refused (e.g. an odd source fs): read/write
            os.write(dst, chunk)


def _at(dir_fd: int, name: str) -> str:
    """A path naming `name` in an open directory, for calls that take no dir_fd (xattrs)."""
    return f"/proc/self/fd/{dir_fd}/{name}"


# xattrs the kernel uses for overlayfs' own bookkeeping: never part of the content.
_SKIP_XATTRS = ("trusted.overlay.", "user.overlay.")


def _xattrs(where: int | str) -> dict[str, bytes]:
    """The xattrs of an open fd, or of a path without following a final symlink."""
    follow = isinstance(where, int)
    try:
        names = os.listxattr(where, follow_symlinks=follow)
    except OSError as err:
        if err.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return {}
        raise
    return {n: os.getxattr(where, n, follow_symlinks=follow) for n in names if not n.startswith(_SKIP_XATTRS)}


def _set_xattrs(where: int | str, xattrs: dict[str, bytes]) -> None:
    follow = isinstance(where, int)
    for name, value in xattrs.items():
        try:
            os.setxattr(where, name, value, follow_symlinks=follow)
        except OSError as err:  # as Docker: a filesystem without that xattr namespace just lacks it
            if err.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP):
                raise


def _finish_fd(fd: int, st: os.stat_result, xattrs: dict[str, bytes]) -> None:
    """Owner, then mode (chown clears setuid bits), then xattrs (chown clears file capabilities), then times."""
    os.fchown(fd, st.st_uid, st.st_gid)
    os.fchmod(fd, stat.S_IMODE(st.st_mode))
    _set_xattrs(fd, xattrs)
    os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))


def _finish_at(dfd: int, name: str, st: os.stat_result, xattrs: dict[str, bytes], chmod: bool) -> None:
    """The same for a symlink or special file, by name in `dfd`, never following a symlink."""
    os.chown(name, st.st_uid, st.st_gid, dir_fd=dfd, follow_symlinks=False)
    if chmod:  # Linux has no lchmod: chmod the node through an O_PATH fd (a symlink would not open)
        fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
        try:
            os.chmod(f"/proc/self/fd/{fd}", stat.S_IMODE(st.st_mode))
        finally:
            os.close(fd)
    _set_xattrs(_at(dfd, name), xattrs)
    os.utime(name, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=dfd, follow_symlinks=False)


# --- the image's merged view, without a mount in the caller's namespace ---------------------------
def views_root() -> str:
    """Where view helpers get their mount points: runtime state, gone at reboot."""
    return os.path.join(settings.run_root(), "volume-views")


@contextlib.contextmanager
def image_dir_view(lowers_top_first: list[str], path: str, workdir: str | None = None) -> Iterator[str | None]:
    """A directory showing the image's merged content at `path` (None: the image has no directory there).

    `path` is resolved inside the image, its symlinks as the container would
    see them, so "/var/run" -> "/run" shows the image's /run, never the host's.
    The yielded path lives under /proc/<helper>/root and works until the block ends.
    """
    if not lowers_top_first:  # FROM scratch: nothing to show
        yield None
        return
    from labkit import rootfs
    from labkit.images import overlay

    overlay.check_depth(len(lowers_top_first))
    parent = workdir or views_root()
    os.makedirs(parent, 0o700, exist_ok=True)
    base = os.path.realpath(tempfile.mkdtemp(prefix="view-", dir=parent))
    helper: subprocess.Popen[str] | None = None
    try:
        lowerdir = _prepare_view(base, lowers_top_first)
        helper = _start_view_helper(base, lowerdir)
        found = rootfs.secure_join(f"/proc/{helper.pid}/root{base}/merged", path)
        yield found if _is_real_dir(found) else None
    finally:
        if helper is not None:
            _stop_view_helper(helper)
        shutil.rmtree(base, ignore_errors=True)


def _prepare_view(base: str, lowers_top_first: list[str]) -> str:
    """l/0, l/1, … -> the layers (short names keep the options within a page), merged/ to mount on."""
    os.mkdir(os.path.join(base, "l"))
    os.mkdir(os.path.join(base, "merged"))
    lowers = list(lowers_top_first)
    if len(lowers) == 1:  # overlayfs without an upper dir wants two lowers: add an empty one
        os.mkdir(os.path.join(base, "empty"))
        lowers.append(os.path.join(base, "empty"))
    for i, layer in enumerate(lowers):
        os.symlink(os.path.abspath(layer), os.path.join(base, "l", str(i)))
    return ":".join(f"l/{i}" for i in range(len(lowers)))


def _start_view_helper(base: str, lowerdir: str) -> subprocess.Popen[str]:
    env = dict(os.environ)
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = here + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    helper = subprocess.Popen([sys.executable, "-m", "labkit.engine.volumes", base, lowerdir],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env, close_fds=True)
    assert helper.stdout is not None and helper.stderr is not None
    line = helper.stdout.readline()  # one JSON line: {"ready": true} or {"error": …, "hint": …}
    if line.startswith("{") and json.loads(line).get("ready"):
        return helper
    reply = json.loads(line) if line.startswith("{") else {}
    stderr = helper.stderr.read().strip().splitlines()  # it has exited: EOF
    _stop_view_helper(helper)
    raise LabkitError(f"cannot show the image's layers: {reply.get('error') or (stderr[-1] if stderr else 'no reply')}",
                      reply.get("hint") or "run as root; check `labkit doctor`")


def _stop_view_helper(helper: subprocess.Popen[str]) -> None:
    """Close its stdin (it exits, and its mount namespace with it); kill it by pid if it lingers."""
    for pipe in (helper.stdin, helper.stdout, helper.stderr):
        if pipe is not None:
            with contextlib.suppress(OSError):
                pipe.close()
    try:
        helper.wait(timeout=10)
    except subprocess.TimeoutExpired:
        helper.kill()
        helper.wait()


def _view_helper(base: str, lowerdir: str) -> int:
    """Body of `python -m labkit.engine.volumes BASE LOWERDIR`: mount, say ready, wait for stdin's end."""
    from labkit import rootfs
    from labkit import sys as lsys
    from labkit.images import overlay

    try:
        lsys.unshare(lsys.CLONE_NEWNS)
        rootfs.make_mounts_private()  # before mounting: nothing may propagate to the host
        overlay.mount({"type": "overlay", "source": "overlay", "options": [f"lowerdir={lowerdir}"], "cwd": base},
                      os.path.join(base, "merged"))
    except (LabkitError, OSError) as err:
        hint = err.hint if isinstance(err, LabkitError) else ""
        print(json.dumps({"error": getattr(err, "what", str(err)), "hint": hint}), flush=True)
        return 1
    print(json.dumps({"ready": True}), flush=True)
    sys.stdin.read()  # EOF: the caller is done, or died
    return 0


if __name__ == "__main__":
    sys.exit(_view_helper(*sys.argv[1:3]))
