"""The container's init path: `python -m labkit.runtime.init`, like `runc init`.

Three processes, the same split runc's nsexec uses:

  shim (this module's main)   stays on the host: writes uid/gid maps, records
     |                         state, then waits for the container and writes
     |                         its exit code (the monitor, like conmon).
     +- stage 1               joins namespaces by path, unshares the new
           |                   ones (a new PID namespace only applies to
           |                   children), reports its child's pid, exits.
           +- container init  PID 1 of the new PID namespace: mounts,
                               pivot_root, hostname, user, cwd; waits on
                               exec.fifo for `start`; then execs process.args.

The shim and stages talk over a socketpair in JSON lines; the caller of
`create` hears back on --ready-fd once the container is created or failed.
The notebook kernel never forks: it only starts this program.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import signal
import socket
import sys
import traceback
from typing import Any

from .. import cgroups, namespaces, rootfs
from .. import sys as lsys
from ..errors import LabkitError
from . import store as st
from .spec import Spec


# --- the channel between shim and stages ------------------------------------------
class Channel:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reader = sock.makefile("r")

    def send(self, kind: str, **fields: Any) -> None:
        self.sock.sendall((json.dumps({"type": kind, **fields}) + "\n").encode())

    def recv(self) -> dict[str, Any]:
        line = self.reader.readline()
        if not line:
            return {"type": "eof"}
        return json.loads(line)


def _error_fields(err: BaseException) -> dict[str, str]:
    if isinstance(err, LabkitError):
        return {"message": err.what, "hint": err.hint}
    return {"message": f"{type(err).__name__}: {err}", "hint": traceback.format_exc(limit=3)}


# --- stage 1 and the container init (run in forked children; never return) ----------
def _new_and_joined(spec: Spec) -> tuple[list[str], list[tuple[str, str]]]:
    linux = spec.linux
    new = [ns.type for ns in linux.namespaces if ns.path is None] if linux else []
    joined = [(ns.type, ns.path) for ns in linux.namespaces if ns.path] if linux else []
    joined.sort(key=lambda item: item[0] != "user")  # a user namespace must be joined first
    return new, joined


def stage1(spec: Spec, bundle: str, fifo: str, chan: Channel, group: cgroups.Cgroup | None) -> None:
    try:
        if group is not None:  # join before unsharing: the cgroup namespace is rooted here
            group.add(os.getpid())
        new, joined = _new_and_joined(spec)
        # Opened while still host root (a user namespace would lose access).
        # O_RDWR never blocks on a FIFO: the init holds both ends until `start` writes.
        fifo_fd = os.open(fifo, os.O_RDWR | os.O_CLOEXEC)
        for ns_type, path in joined:
            namespaces.join(path, ns_type)
        lsys.unshare(namespaces.flags_for(new))
        if "user" in new:  # only a process outside may write our id maps
            chan.send("userns", pid=os.getpid())
            if chan.recv().get("type") != "ok":
                os._exit(1)
        child = os.fork()
        if child == 0:
            container_init(spec, bundle, fifo_fd, chan)
        chan.send("pid", pid=child)
        os._exit(0)
    except BaseException as err:  # report, never unwind into the shim's code
        chan.send("error", **_error_fields(err))
        os._exit(1)


def container_init(spec: Spec, bundle: str, fifo_fd: int, chan: Channel) -> None:
    try:
        if chan.recv().get("type") != "go":
            os._exit(1)
        lsys.set_pdeathsig(signal.SIGKILL)  # the container dies with its monitor
        linux = spec.linux
        if linux and linux.namespace("user"):
            os.setresgid(0, 0, 0)  # act as the mapped root, not as the overflow id
            os.setresuid(0, 0, 0)
        setup_rootfs(spec, bundle)
        if spec.hostname:
            lsys.sethostname(spec.hostname)
        process = spec.process
        assert process is not None
        os.chdir(process.cwd)
        env = dict(e.split("=", 1) for e in process.env if "=" in e)
        user = process.user
        os.setgroups(user.additionalGids or [])
        os.setresgid(user.gid, user.gid, user.gid)
        os.setresuid(user.uid, user.uid, user.uid)
        if user.umask is not None:
            os.umask(user.umask)
        chan.send("created")
        os.read(fifo_fd, 1)  # blocks until `start`
        chan.sock.close()
    except BaseException as err:
        chan.send("error", **_error_fields(err))
        os._exit(1)
    try:
        os.execvpe(process.args[0], process.args, env)
    except OSError as err:
        os.write(2, f"labkit: exec {process.args[0]!r}: {err.strerror}\n".encode())
        os._exit(127 if isinstance(err, FileNotFoundError) else 126)


def setup_rootfs(spec: Spec, bundle: str) -> None:
    """Mounts and pivot_root, in the order the kernel needs them."""
    root = spec.rootfs_path(bundle)
    rootfs.make_mounts_private()
    rootfs.bind_onto_itself(root)
    for m in spec.mounts:
        source = m.source
        if source and (m.type == "bind" or "bind" in (m.options or []) or "rbind" in (m.options or [])):
            source = os.path.join(bundle, source)  # relative bind sources are bundle-relative
        rootfs.mount_one(root, m.destination, m.type, source, m.options or [])
    rootfs.populate_dev(root)
    rootfs.pivot_into(root)
    if spec.root and spec.root.readonly:
        rootfs.remount_readonly_root()


# --- the shim ---------------------------------------------------------------------------
def write_id_maps(pid: int, spec: Spec) -> None:
    linux = spec.linux
    assert linux is not None
    for name, mappings in (("uid_map", linux.uidMappings), ("gid_map", linux.gidMappings)):
        lines = "".join(f"{m.containerID} {m.hostID} {m.size}\n" for m in mappings or [])
        with open(f"/proc/{pid}/{name}", "w") as f:
            f.write(lines)


def shim(container_id: str, bundle: str, directory: str, ready_fd: int) -> int:
    spec = Spec.load(bundle).validate(bundle)
    fifo = os.path.join(directory, "exec.fifo")
    try:
        group = make_cgroup(container_id, spec)
    except LabkitError as err:
        os.write(ready_fd, json.dumps({"error": err.what, "hint": err.hint}).encode())
        return 1
    ours, theirs = socket.socketpair()
    chan = Channel(ours)
    lsys.set_child_subreaper()  # the container init is reparented to us when stage 1 exits
    first = os.fork()
    if first == 0:
        ours.close()
        os.close(ready_fd)  # only the shim reports to the caller
        stage1(spec, bundle, fifo, Channel(theirs), group)
    theirs.close()

    def fail(msg: dict[str, Any]) -> int:
        remove_cgroup(group)
        os.write(ready_fd, json.dumps({"error": msg.get("message", "container init failed"),
                                       "hint": msg.get("hint", "")}).encode())
        return 1

    msg = chan.recv()
    if msg["type"] == "userns":
        try:
            write_id_maps(first, spec)
        except OSError as err:
            chan.send("fail")
            return fail({"message": f"writing uid/gid maps failed: {err}", "hint": "check linux.uidMappings"})
        chan.send("ok")
        msg = chan.recv()
    if msg["type"] != "pid":
        os.waitpid(first, 0)
        return fail(msg)
    pid = msg["pid"]
    os.waitpid(first, 0)
    chan.send("go")
    msg = chan.recv()
    if msg["type"] != "created":
        _reap(pid)
        return fail(msg)
    start_time = st.proc_start_time(pid)
    st.write_json(os.path.join(directory, "state.json"), {
        "id": container_id, "pid": pid, "start_time": start_time, "bundle": bundle,
        "shim_pid": os.getpid(), "annotations": spec.annotations or {},
        "cgroup": dataclasses.asdict(group) if group else None,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
    })
    os.write(ready_fd, json.dumps({"pid": pid}).encode())
    os.close(ready_fd)
    _detach_stdio()
    code = _reap(pid)
    remove_cgroup(group)
    st.write_json(os.path.join(directory, "exit.json"), {"exit_code": code})
    return code


def make_cgroup(container_id: str, spec: Spec) -> cgroups.Cgroup | None:
    """The container's cgroup with its limits, made before any process exists."""
    linux = spec.linux
    if linux is None or not linux.wants_cgroup():
        return None
    group = cgroups.create(linux.cgroupsPath or container_id)
    try:
        group.apply(linux.resources)
    except LabkitError:
        remove_cgroup(group)
        raise
    return group


def remove_cgroup(group: cgroups.Cgroup | None) -> None:
    if group is not None:
        group.remove()
        cgroups.remove_parents(group.name)


def _detach_stdio() -> None:
    """Let the caller's pipes reach EOF when the container closes them, not us."""
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)


def _reap(pid: int) -> int:
    """Wait for `pid`, also reaping orphans reparented to us; its exit code."""
    while True:
        try:
            done, status = os.waitpid(-1, 0)
        except ChildProcessError:
            return 255
        if done == pid:
            return namespaces.exit_code(status)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="labkit.runtime.init")
    parser.add_argument("--id", required=True)
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--ready-fd", type=int, required=True)
    args = parser.parse_args(argv)
    try:
        return shim(args.id, args.bundle, args.state_dir, args.ready_fd)
    except LabkitError as err:
        os.write(args.ready_fd, json.dumps({"error": err.what, "hint": err.hint}).encode())
        return 1


if __name__ == "__main__":
    sys.exit(main())
