"""Chapter 07 exercises: where a container's files live on the host, and a volume backup.

1. `host_path(container, path)` returns where, on the host, the file lives that a
   running container sees at `path`. The check starts a container (`labkit run -d`)
   with a named volume at /data, a second volume mounted inside it at /data/cache and
   a host directory bind-mounted at /src; the container writes a fresh random token
   into files under /data, /data/cache, /tmp and /database (not inside /data: a trap
   for string prefixes), the host one into /src. For each path the check reads the
   file at the path the learner's function returned, on the host: it must hold the
   token, and lie in the volume's directory, the bound host directory or the
   container's writable layer (the overlay upper dir), whichever holds it.

2. `backup_command(volume, backup_dir)` returns the words of a `labkit …` command
   that writes `backup_dir/backup.tar`, a tar of the volume's files, with the
   volume mounted read-only and no container left behind. The check fills a fresh
   volume (a dotfile, a subdirectory, a 0600 file), reads the command's mounts with
   labkit's own parser, runs it, then opens the tar: every file of the volume, with
   its content and mode, relative to the volume's top; and the volume unchanged.

Every check starts what it needs itself, under random names, and removes it
afterwards. Hints come in tiers: the first failure of a kind gets a nudge, the
next a pointer, the third the answer (`HINTS.reset()` starts over).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import secrets
import shlex
import shutil
import stat
import tarfile
import tempfile
from typing import Any, Callable, Iterator

from ..errors import LabkitError
from . import Hints, Verdict, engine, failed, labkit_cli, passed

HINTS = Hints()


# --- running labkit -----------------------------------------------------------------------------------
_labkit = labkit_cli
_engine = engine


@contextlib.contextmanager
def _scratch_dir() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="labkit-check-ch07-")
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _remove(containers: list[str], volumes: list[str]) -> None:
    """Remove the check's containers (by name or id) and volumes, whatever state they are in."""
    if containers:
        _labkit("rm", "-f", "-v", *containers)
    engine = _engine()
    for name in volumes:
        with contextlib.suppress(LabkitError):
            for user in engine.volume_users(name):  # e.g. a learner's container left behind
                _labkit("rm", "-f", user)
            engine.volumes.remove(name, force=True)


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


def _under(path: str, root: str) -> bool:
    path, root = os.path.realpath(path), os.path.realpath(root)
    return path == root or path.startswith(root + os.sep)


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except (OSError, UnicodeDecodeError):
        return None


# --- exercise 1: where do the bytes live? ---------------------------------------------------------------
HostPath = Callable[[str, str], Any]

INSPECT = "`labkit inspect CONTAINER` lists its Mounts: each Destination (in the container) with its Source (on the host)"
UPPER = "<data root>/containers/<container id>/bundle/overlay/upper"
WHERE_HINTS = {
    "volume": ("/data is where a named volume is mounted: the file is in that volume's directory on the host",
               INSPECT,
               "take the mount whose Destination is /data and return its Source + the rest of the path: "
               "os.path.join(source, os.path.relpath(path, destination))"),
    "bind": ("/src is a bind mount: the file is in the host directory that was bound there",
             INSPECT + " — for a bind mount, Source is the host directory itself",
             "take the mount whose Destination is /src and return its Source + the rest of the path"),
    "layer": ("no volume or bind mount covers /tmp: the file is in the container's writable layer",
              f"the writable layer is the overlay's upper dir, in the container's directory: {UPPER} (section 1)",
              "os.path.join(ws.data_root, 'containers', container_id, 'bundle', 'overlay', 'upper', "
              "path.lstrip('/')), with the id from `labkit inspect --format '{{.Id}}' CONTAINER`"),
    "nested": ("/data/cache is a mount of its own, inside /data",
               "when several Destinations contain the path, the container sees the deepest one: it was "
               "mounted last, on top of the others",
               "of the mounts that contain the path, use the one with the longest Destination"),
    "prefix": ("/database is not inside /data",
               "'/database'.startswith('/data') is True, yet /database is a different directory: compare "
               "whole path components",
               "a mount at dest contains path only if path == dest or path.startswith(dest + '/')"),
}
WHERE_CASES = (  # container path, what holds it
    ("/data/notes/today.txt", "volume"),
    ("/src/main.py", "bind"),
    ("/tmp/ch07-scratch.txt", "layer"),
    ("/data/cache/blob.bin", "nested"),
    ("/database/rows.txt", "prefix"),
)


def where_it_lives(host_path: HostPath) -> Verdict:
    """Check `host_path(container, path)` on a container with a volume, a nested volume and a bind mount."""
    tag = secrets.token_hex(4)
    name, data, cache = f"ch07-where-{tag}", f"ch07-data-{tag}", f"ch07-cache-{tag}"
    tokens = {path: secrets.token_hex(8) for path, _ in WHERE_CASES}
    with _scratch_dir() as src:
        try:
            with open(os.path.join(src, "main.py"), "w") as f:
                f.write(tokens["/src/main.py"] + "\n")
            run = _labkit("run", "-d", "--name", name, "-v", f"{data}:/data", "-v", f"{cache}:/data/cache",
                          "-v", f"{src}:/src", "busybox", "sleep", "3600")
            if run.returncode != 0:
                return failed(f"the check could not start its container: {_last_line(run.stderr)}",
                              "run `labkit doctor` to see what this machine lacks")
            script = " && ".join(["mkdir -p /data/notes /database"] + [
                f"echo {tokens[path]} > {path}" for path, kind in WHERE_CASES if kind != "bind"])
            written = _labkit("exec", name, "sh", "-c", script)
            if written.returncode != 0:
                return failed(f"the check could not write its files: {_last_line(written.stderr)}",
                              "run `labkit doctor` to see what this machine lacks")
            engine = _engine()
            record = engine.get(name)
            roots = {"volume": engine.volumes.path(data), "nested": engine.volumes.path(cache), "bind": src,
                     "layer": engine.store.path(record.id, "bundle", "overlay", "upper")}
            roots["prefix"] = roots["layer"]
            for path, kind in WHERE_CASES:
                verdict = _judge_where(host_path, name, path, kind, tokens[path] + "\n", roots[kind])
                if verdict is not None:
                    return verdict
        finally:
            _remove([name], [data, cache])
    return passed("every file found where it lives on the host: the volume's directory (/data), the inner "
                  "volume's (/data/cache), the bound host directory (/src), the writable layer (/tmp, /database)")


def _judge_where(host_path: HostPath, name: str, path: str, kind: str, token: str, root: str) -> Verdict | None:
    call = f"host_path(container, {path!r})"
    try:
        answer = host_path(name, path)
    except Exception as err:  # the learner's code: report it, don't crash the notebook
        return failed(f"{call} raised {type(err).__name__}: {err}",
                      "it gets the container's name and a path inside the container; return a host path (a str)")
    if isinstance(answer, os.PathLike):
        answer = os.fspath(answer)
    if not isinstance(answer, str) or not answer:
        return failed(f"{call} returned {answer!r}, not a path", "return the host path as a str")
    if answer.startswith("/proc/"):
        return failed(f"{call} returned {answer!r}, a path through a process's view of the container",
                      "/proc/PID/root shows what the container sees, not where the file is stored: find the "
                      "directory on the host that holds it")
    if _read(answer) == token and _under(answer, root):
        return None
    what = "there is no such file on the host" if not os.path.isfile(answer) else \
        "that file does not hold what the container sees at " + path
    return HINTS.failed("where", kind, f"{call} returned {answer!r}: {what}", WHERE_HINTS[kind])


# --- exercise 2: back up a volume -----------------------------------------------------------------------
BackupCommand = Callable[[str, str], Any]
TAR_NAME = "backup.tar"
_FILES = {"notes.txt": 0o644, ".secret": 0o600, "sub/deep/answer.txt": 0o644}


ANSWER = ("['run', '--rm', '-v', f'{volume}:/data:ro', '-v', f'{backup_dir}:/backup', 'busybox', "
          "'tar', 'cf', '/backup/backup.tar', '-C', '/data', '.']")
BACKUP_HINTS = {
    "mount": ("the backup container must see the volume's files: mount the volume into it",
              "-v VOLUME:/data mounts the named volume at /data in the container",
              "start from " + ANSWER),
    "ro": ("a backup only reads the volume: say so, and let the kernel hold you to it",
           "a mount can be read-only: -v VOLUME:/data:ro (writes to it then fail with EROFS)",
           "mount it as f'{volume}:/data:ro', as in " + ANSWER),
    "bind": ("the tar must end up on the host, in backup_dir: a file written in the container's own "
             "filesystem goes with the container",
             "bind-mount backup_dir into the container (-v BACKUP_DIR:/backup) and write the tar there",
             "add '-v', f'{backup_dir}:/backup' and write /backup/backup.tar, as in " + ANSWER),
    "rm": ("once the tar is written the backup container is of no use, yet it would stay behind",
           "`labkit run --rm` removes the container as soon as it exits",
           "put '--rm' after 'run', as in " + ANSWER),
    "missing": ("nothing named backup.tar was written to backup_dir",
                "tar's f option names the file it writes: it must be the container path where backup_dir "
                "is mounted, + /backup.tar",
                "'tar', 'cf', '/backup/backup.tar', '-C', '/data', '.' with backup_dir mounted at /backup"),
    "dotfile": ("the tar lacks .secret, a file whose name starts with a dot",
                "the shell's * does not match names that start with a dot",
                "let tar read the directory itself: 'tar', 'cf', '/backup/backup.tar', '-C', '/data', '.'"),
    "prefix": ("the tar's paths start with the mount point, so a restore would put the files one level too deep",
               "tar -C DIR . stores the paths relative to DIR",
               "'tar', 'cf', '/backup/backup.tar', '-C', '/data', '.'"),
}


def backup_volume(backup_command: BackupCommand) -> Verdict:
    """Check `backup_command(volume, backup_dir)`: mounts as labkit parses them, then the tar it wrote."""
    volume = f"ch07-backup-{secrets.token_hex(4)}"
    engine = _engine()
    with _scratch_dir() as backup_dir:
        try:
            vol = engine.volumes.create(volume)
            expected = _fill(vol.mountpoint)
            args = _args(backup_command, volume, backup_dir)
            if isinstance(args, Verdict):
                return args
            verdict = _judge_command(args, volume, backup_dir)
            if verdict is not None:
                return verdict
            run = _labkit(*args)
            if run.returncode != 0:
                return failed(f"`labkit {shlex.join(args)}` exited with status {run.returncode}: "
                              f"{_last_line(run.stderr)}",
                              "run the command in a terminal (labkit …) to see all of its output")
            left = engine.volume_users(volume)
            if left:
                return HINTS.failed("backup", "rm", "a container was left behind after the backup", BACKUP_HINTS["rm"])
            if _snapshot(vol.mountpoint) != expected:
                return failed("the volume changed during the backup",
                              "a backup must only read the volume: write the tar to backup_dir alone")
            return _judge_tar(os.path.join(backup_dir, TAR_NAME), backup_dir, expected)
        finally:
            _remove([], [volume])


def _fill(directory: str) -> dict[str, tuple[str, int]]:
    """Files with random contents and fixed modes; {relative name: (content, mode)}."""
    for name, mode in _FILES.items():
        path = os.path.join(directory, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(secrets.token_hex(8) + "\n")
        os.chmod(path, mode)
    return _snapshot(directory)


def _snapshot(directory: str) -> dict[str, tuple[str, int]]:
    out = {}
    for dirpath, _, filenames in os.walk(directory):
        for name in filenames:
            path = os.path.join(dirpath, name)
            out[os.path.relpath(path, directory)] = (_read(path) or "", stat.S_IMODE(os.lstat(path).st_mode))
    return out


def _args(backup_command: BackupCommand, volume: str, backup_dir: str) -> list[str] | Verdict:
    try:
        answer = backup_command(volume, backup_dir)
    except Exception as err:
        return failed(f"backup_command raised {type(err).__name__}: {err}",
                      "it gets the volume's name and a host directory; return the words of a labkit command")
    if isinstance(answer, str):
        answer = shlex.split(answer)
    if not isinstance(answer, (list, tuple)) or not answer or not all(isinstance(a, str) for a in answer):
        return failed(f"backup_command returned {answer!r}, not the words of a command",
                      "return a list of str: the words that follow `labkit`, e.g. ['run', …]")
    args = list(answer)
    return args[1:] if os.path.basename(args[0]) == "labkit" else args


def _parse(args: list[str]) -> argparse.Namespace | Verdict:
    """The command as `labkit` itself parses it (no container is made)."""
    from .. import cli_engine

    parser = argparse.ArgumentParser(prog="labkit", add_help=False)
    cli_engine.add_verbs(parser.add_subparsers(dest="verb", required=True))
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            return parser.parse_args(args)
    except SystemExit:
        return failed(f"labkit would refuse `labkit {shlex.join(args)}`: {_last_line(errors.getvalue())}",
                      "the words follow `labkit`: ['run', OPTIONS…, 'busybox', COMMAND…]")


def _judge_command(args: list[str], volume: str, backup_dir: str) -> Verdict | None:
    from ..engine import mounts as emounts

    ns = _parse(args)
    if isinstance(ns, Verdict):
        return ns
    if ns.verb != "run":
        return failed(f"the command is `labkit {ns.verb} …`: the backup needs a container that runs tar",
                      "start with 'run': ['run', OPTIONS…, 'busybox', 'tar', …]")
    try:
        found = [emounts.parse_volume(v, create_missing=False) for v in ns.volume] + \
            [emounts.parse_mount(m) for m in ns.mount]
    except LabkitError as err:
        return failed(f"labkit would refuse a mount: {err.what}", err.hint or "see `labkit run --help`")
    of_volume = [m for m in found if m.type == "volume" and m.source == volume]
    if not of_volume:
        return HINTS.failed("backup", "mount", "the container does not mount the volume", BACKUP_HINTS["mount"])
    if not all(m.read_only for m in of_volume):
        return HINTS.failed("backup", "ro", "the volume is mounted read-write", BACKUP_HINTS["ro"])
    binds = [m for m in found if m.type == "bind" and _under(backup_dir, m.source)]
    if not binds:
        return HINTS.failed("backup", "bind", "backup_dir is not mounted into the container", BACKUP_HINTS["bind"])
    if all(m.read_only for m in binds):
        return failed("backup_dir is mounted read-only: tar could not write the backup there",
                      "only the volume is read-only; mount backup_dir read-write")
    if ns.detach:
        return failed("with -d, labkit returns before tar has finished",
                      "leave -d out: `labkit run` then returns when the container has exited")
    if not ns.rm:
        return HINTS.failed("backup", "rm", "the container would stay behind after the backup", BACKUP_HINTS["rm"])
    return None


def _judge_tar(path: str, backup_dir: str, expected: dict[str, tuple[str, int]]) -> Verdict:
    if not os.path.isfile(path):
        others = sorted(os.listdir(backup_dir))
        message = f"backup_dir holds {', '.join(others)}, not {TAR_NAME}" if others else "backup_dir is empty"
        return HINTS.failed("backup", "missing", message, BACKUP_HINTS["missing"])
    try:
        with tarfile.open(path, "r:*") as tar:
            files = {_clean(m.name): (m, tar.extractfile(m).read().decode(errors="replace"))
                     for m in tar.getmembers() if m.isfile()}
    except (tarfile.TarError, OSError) as err:
        return failed(f"{TAR_NAME} is not a tar archive labkit can read: {err}", "write it with busybox's tar cf")
    names = set(files)
    if names != set(expected):
        prefixed = {n.split("/", 1)[1] for n in names if "/" in n}
        if set(expected) <= prefixed or {n for n in expected if not n.startswith(".")} <= prefixed:
            example = next(n for n in sorted(names) if n.endswith("/notes.txt"))
            return HINTS.failed("backup", "prefix", f"the tar holds {example}, where the volume has notes.txt",
                                BACKUP_HINTS["prefix"])
        if names == {n for n in expected if not os.path.basename(n).startswith(".")}:
            return HINTS.failed("backup", "dotfile", "the tar holds every file of the volume but .secret",
                                BACKUP_HINTS["dotfile"])
        missing, extra = sorted(set(expected) - names), sorted(names - set(expected))
        return failed("the tar's files differ from the volume's: "
                      + "; ".join(part for part in (f"missing {', '.join(missing)}" if missing else "",
                                                    f"extra {', '.join(extra)}" if extra else "") if part),
                      "tar the whole volume and nothing else: tar cf /backup/backup.tar -C /data .")
    for name, (content, mode) in sorted(expected.items()):
        member, got = files[name]
        if got != content:
            return failed(f"{name} in the tar differs from the volume's", "tar the files as they are in the volume")
        if stat.S_IMODE(member.mode) != mode:
            return failed(f"{name} is mode {stat.S_IMODE(member.mode):o} in the tar, {mode:o} in the volume",
                          "let tar record the modes (busybox tar cf does)")
    return passed(f"{TAR_NAME} holds the volume's {len(expected)} files (.secret too) with their contents and "
                  "modes; the volume was mounted read-only and left unchanged; no container was left behind")


def _clean(name: str) -> str:
    return "/".join(p for p in name.split("/") if p not in ("", "."))
