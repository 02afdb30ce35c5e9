"""The container's init path: `python -m labkit.runtime.init`, like `runc init`.

Three processes, the same split runc's nsexec uses:

  shim (this module's main)   stays on the host: writes uid/gid maps, records
     |                         state, then waits for the container and writes
     |                         its exit code (the monitor, like conmon).
     +- stage 1               joins namespaces by path, unshares the new
           |                   ones (a new PID namespace only applies to
           |                   children), reports its child's pid, exits.
           +- container init  PID 1 of the new PID namespace: mounts,
                               pivot_root, hostname, cwd, rlimits, bounding
                               set, user, capabilities, seccomp; waits on
                               exec.fifo for `start`; then execs process.args.

The shim and stages talk over a socketpair in JSON lines; the caller of
`create` hears back on --ready-fd once the container is created or failed.
The notebook kernel never forks: it only starts this program.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import os
import resource
import signal
import socket
import stat
import sys
from typing import Any

from .. import capabilities, cgroups, namespaces, rootfs, seccomp
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


class NotExecutable(LabkitError):
    """process.args[0] cannot be run: `create` fails, as in runc (a CLI may exit 127/126, like docker)."""

    def __init__(self, what: str, hint: str, exit_code: int) -> None:
        super().__init__(what, hint)
        self.exit_code = exit_code


def _error_fields(err: BaseException) -> dict[str, Any]:
    if isinstance(err, NotExecutable):
        return {"message": err.what, "hint": err.hint, "exit_code": err.exit_code}
    if isinstance(err, LabkitError):
        return {"message": err.what, "hint": err.hint}
    import traceback  # only on this unexpected path: it is slow to import

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
        if "user" in new:  # first the user namespace, alone: the others are then made by its root
            lsys.unshare(lsys.CLONE_NEWUSER)
            chan.send("userns", pid=os.getpid())  # only a process outside may write our id maps
            if chan.recv().get("type") != "ok":
                os._exit(1)
            # As runc's nsexec: become the mapped root (uid only) before unsharing the rest,
            # so e.g. the new IPC namespace's mqueue root belongs to the container's root.
            os.setresuid(0, 0, 0)
            new = [t for t in new if t != "user"]
        lsys.unshare(namespaces.flags_for(new))
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
        os.setsid()  # its own session and process group (sid = pgid = 1), as under runc
        linux = spec.linux
        if linux and linux.namespace("user"):
            os.setresgid(0, 0, 0)  # act as the mapped root, not as the overflow id
            os.setresuid(0, 0, 0)
        last_cap = capabilities.last_cap()  # from /proc, which the container may not have
        # Built now, loaded just before exec: libseccomp is a host library, not in the rootfs.
        syscall_filter = seccomp.compile(linux.seccomp) if linux and linux.seccomp else None
        setup_rootfs(spec, bundle)
        if spec.hostname:
            lsys.sethostname(spec.hostname)
        process = spec.process
        assert process is not None
        os.makedirs(process.cwd, 0o755, exist_ok=True)  # runc creates a missing cwd, as root
        os.chdir(process.cwd)
        env = dict(e.split("=", 1) for e in process.env if "=" in e)
        user = process.user
        if "HOME" not in env:  # runc sets it from the container's /etc/passwd
            env["HOME"] = home_of(user.uid)
        set_rlimits(process.rlimits or [])  # while still root: raising a hard limit needs it
        if process.noNewPrivileges:
            lsys.set_no_new_privs()
        elif syscall_filter is not None:  # without no_new_privs, loading needs CAP_SYS_ADMIN: now
            seccomp.load(syscall_filter)
        caps = process.capabilities or {}  # none listed: none kept, as runc
        capabilities.drop_bounding(caps.get("bounding", []), last_cap)
        lsys.set_keepcaps(True)  # or leaving uid 0 would empty the permitted set
        os.setgroups(user.additionalGids or [])
        os.setresgid(user.gid, user.gid, user.gid)
        os.setresuid(user.uid, user.uid, user.uid)
        lsys.set_keepcaps(False)
        lsys.set_pdeathsig(signal.SIGKILL)  # a change of effective uid/gid clears it
        capabilities.apply_sets(caps, last_cap)
        os.umask(user.umask if user.umask is not None else 0o022)  # runc's default, not the caller's
        program = look_path(process.args[0], env)  # as the user: a bad program fails `create`
        reset_signals()
        if syscall_filter is not None and process.noNewPrivileges:
            seccomp.load(syscall_filter)  # as close to exec as it can be: few calls left to allow
        chan.send("created")
        os.read(fifo_fd, 1)  # blocks until `start`
        chan.sock.close()
    except BaseException as err:
        chan.send("error", **_error_fields(err))
        os._exit(1)
    try:
        os.execve(program, process.args, env)
    except OSError as err:  # e.g. removed between create and start
        os.write(2, f"labkit: exec {process.args[0]!r}: {err.strerror}\n".encode())
        os._exit(127 if isinstance(err, FileNotFoundError) else 126)


def reset_signals() -> None:
    """Default dispositions and no blocked signals, as under runc. exec keeps ignored
    signals and the mask: Python ignores SIGPIPE and SIGXFSZ, and a caller started in
    the background by a shell ignores SIGINT and SIGQUIT; the container must not inherit them."""
    for sig in signal.valid_signals():
        if sig not in (signal.SIGKILL, signal.SIGSTOP):
            try:
                signal.signal(sig, signal.SIG_DFL)
            except (OSError, ValueError):  # a number glibc keeps for itself
                pass
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


def set_rlimits(rlimits: list[dict[str, Any]]) -> None:
    """process.rlimits: setrlimit(2) for each; they survive execve."""
    for r in rlimits:
        resource.setrlimit(getattr(resource, r["type"]), (r["soft"], r["hard"]))


def home_of(uid: int, passwd: str = "/etc/passwd") -> str:
    """The home directory of `uid` in the container's passwd file, else "/" (as runc)."""
    try:
        with open(passwd) as f:
            for line in f:
                fields = line.rstrip("\n").split(":")
                if len(fields) >= 6 and fields[2].isdigit() and int(fields[2]) == uid:
                    return fields[5]
    except OSError:
        pass
    return "/"


def look_path(name: str, env: dict[str, str]) -> str:
    """Resolve process.args[0] like execvp (and runc, before it reports `created`)."""
    if "/" in name:
        _check_executable(name, name)
        return name
    for directory in env.get("PATH", os.defpath).split(":"):
        path = os.path.join(directory or ".", name)
        try:
            _check_executable(name, path)
            return path
        except NotExecutable:
            continue
    raise NotExecutable(f'exec: "{name}": executable file not found in $PATH',
                        "check process.args[0] and the PATH in process.env", 127)


def _check_executable(name: str, path: str) -> None:
    try:
        mode = os.stat(path).st_mode
    except OSError as err:
        raise NotExecutable(f'exec: "{name}": stat {path}: {err.strerror}',
                            "the program is not in the container's root filesystem", 127) from None
    if stat.S_ISDIR(mode) or not mode & 0o111:
        raise NotExecutable(f'exec: "{name}": permission denied',
                            "the program must be a file with an execute bit (chmod +x)", 126)


def setup_rootfs(spec: Spec, bundle: str) -> None:
    """Mounts and pivot_root, in the order the kernel needs them."""
    root = spec.rootfs_path(bundle)
    rootfs.make_mounts_private()
    mount_rootfs(spec, root)
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


# Set by labkit.images: a filesystem (an overlay of the image's layers) to mount as the rootfs.
ROOTFS_ANNOTATION = "org.labkit.rootfs.mount"


def mount_rootfs(spec: Spec, root: str) -> None:
    """Mount the rootfs the caller described ({"type", "source", "options", "cwd"}) onto root.

    Like containerd handing its rootfs mounts to the shim, but mounted here, in
    the container's private mount namespace: it dies with the container and is
    never visible on the host. `cwd` lets overlay options use short relative
    lowerdir paths (the option string is limited to one page).
    """
    wanted = (spec.annotations or {}).get(ROOTFS_ANNOTATION)
    if not wanted:
        return
    m = json.loads(wanted)
    os.chdir(m.get("cwd") or "/")
    try:
        lsys.mount(m.get("source") or m["type"], root, m["type"], 0, ",".join(m.get("options") or []) or None)
    finally:
        os.chdir("/")


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
        reply = {"error": msg.get("message", "container init failed"), "hint": msg.get("hint", "")}
        if "exit_code" in msg:  # process.args[0] cannot be executed
            reply["exit_code"] = msg["exit_code"]
        os.write(ready_fd, json.dumps(reply).encode())
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
    final = final_stats(group)  # read before the group goes: e.g. whether the OOM killer struck
    remove_cgroup(group)
    st.write_json(os.path.join(directory, "exit.json"),
                  {"exit_code": code, **({"cgroup_stats": final} if final is not None else {})})
    return code


def make_cgroup(container_id: str, spec: Spec) -> cgroups.Cgroup | None:
    """The container's cgroup with its limits, made before any process exists."""
    linux = spec.linux
    if linux is None or not linux.wants_cgroup():
        return None
    group = cgroups.create(linux.cgroupsPath or container_id)
    in_use = group.pids()
    if in_use:  # e.g. the same id under another run root: sharing it, our exit would kill theirs
        raise cgroups.CgroupError(f"the container's cgroup is not empty: {len(in_use)} process(es) "
                                  f"found in {group.name}",
                                  "another container uses it (the same id under another run root, or "
                                  "the same linux.cgroupsPath): pick another id or cgroupsPath")
    try:
        group.apply(linux.resources)
    except BaseException:  # whatever went wrong, the group must not outlive this
        remove_cgroup(group)
        raise
    return group


def final_stats(group: cgroups.Cgroup | None) -> dict[str, Any] | None:
    """The cgroup's counters once the container has exited (`docker inspect`'s OOMKilled)."""
    if group is None:
        return None
    try:
        return group.stats()
    except (OSError, LabkitError):
        return None


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


OPTIONS = ("--id", "--bundle", "--state-dir", "--ready-fd")
USAGE = "usage: python -m labkit.runtime.init --id ID --bundle DIR --state-dir DIR --ready-fd FD"


def parse_args(argv: list[str]) -> dict[str, str]:
    """The four required options, `--name value` or `--name=value`.

    Parsed by hand: this runs at every container start, and importing argparse
    would cost more than everything else the options need.
    """
    values: dict[str, str] = {}
    args = iter(argv)
    for arg in args:
        name, eq, value = arg.partition("=")
        if name not in OPTIONS:
            raise ValueError(f"unrecognized argument: {arg}")
        if not eq:
            value = next(args, None)
            if value is None:
                raise ValueError(f"argument {name}: expected one argument")
        values[name] = value
    missing = [o for o in OPTIONS if o not in values]
    if missing:
        raise ValueError("the following arguments are required: " + ", ".join(missing))
    if not values["--ready-fd"].isdigit():
        raise ValueError(f"argument --ready-fd: invalid int value: {values['--ready-fd']!r}")
    return values


def main(argv: list[str] | None = None) -> int:
    try:
        opts = parse_args(sys.argv[1:] if argv is None else argv)
    except ValueError as err:
        print(f"{USAGE}\nlabkit.runtime.init: error: {err}", file=sys.stderr)
        return 2
    ready_fd = int(opts["--ready-fd"])
    try:
        return shim(opts["--id"], opts["--bundle"], opts["--state-dir"], ready_fd)
    except LabkitError as err:
        os.write(ready_fd, json.dumps({"error": err.what, "hint": err.hint}).encode())
        return 1


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # skip the interpreter's teardown: the container's exit code is already recorded
