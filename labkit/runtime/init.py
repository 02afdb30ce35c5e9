"""The runtime's create path: what `runc create` and `runc init` do.

`create_container` runs in a fresh, single-threaded process (the
`labkit-runc` command, or labkit's monitor) and forks, as runc's nsexec does:

  caller (create_container)  makes the cgroup, writes uid/gid maps, writes
     |                       state.json, and returns once the container is
     |                       created: `labkit-runc create` then exits.
     +- stage 1              sets oom_score_adj (still host root), joins
           |                 namespaces by path, unshares the new ones
           |                 (a new PID namespace only applies to children),
           |                 reports its child's pid, exits.
           +- container init PID 1 of the new PID namespace: mounts and
                             /dev, pivot_root, hostname, sysctls, read-only
                             and masked paths, cwd, rlimits, bounding set,
                             user, capabilities, seccomp; waits on exec.fifo
                             for `start`; then execs process.args.

When stage 1 exits, the kernel gives the container init to the caller's
nearest child subreaper (conmon, containerd-shim, labkit's monitor, or the
`labkit-runc run` process itself), which collects its exit status; with none,
to PID 1. The runtime never stays behind as the container's parent.

The caller and the stages talk over a socketpair in JSON lines:

  stage 1  -> caller   {"type": "userns", "pid": P}   write my id maps (a new user namespace)
  caller   -> stage 1  {"type": "ok"} | {"type": "fail"}
  stage 1  -> caller   {"type": "pid", "pid": P}      the container init's pid; stage 1 exits
  caller   -> init     {"type": "go", "pdeathsig": B} stage 1 is reaped: set up the container
  init     -> caller   {"type": "created"}            blocked on exec.fifo until `start`
  any      -> caller   {"type": "error", "message", "hint"[, "exit_code"]}
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import os
import resource
import select
import shutil
import signal
import socket
import stat
from typing import Any, Callable

from .. import apparmor, capabilities, cgroups, namespaces, rootfs, seccomp, sysctl
from .. import sys as lsys
from ..errors import ContainerError, LabkitError, SpecError
from . import store as st
from .spec import Spec


# --- the channel between the caller and the stages --------------------------------------
class Channel:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reader = sock.makefile("r")

    def send(self, kind: str, **fields: Any) -> None:
        try:
            self.sock.sendall((json.dumps({"type": kind, **fields}) + "\n").encode())
        except OSError as err:  # the other side died (EPIPE, ECONNRESET)
            raise ContainerError(f"the container's init exited before it was told {kind!r}: {err.strerror}",
                                 "it was killed, or failed: see its stderr above") from None

    def recv(self) -> dict[str, Any]:
        try:
            line = self.reader.readline()
        except OSError:  # ECONNRESET: it died with our last message unread
            line = ""
        if not line:
            return {"type": "eof"}
        return json.loads(line)


class ExecError(ContainerError):
    """process.args[0] is missing or not executable: `create` fails, as in runc.

    `exit_code` is what a shell (and `docker run`) reports for it: 127 or 126.
    """

    def __init__(self, what: str, hint: str, exit_code: int) -> None:
        super().__init__(what, hint)
        self.exit_code = exit_code


@dataclasses.dataclass
class CreateOptions:
    """How the caller of `create_container` wants the container made (runc's create flags)."""

    reaper: bool = False  # the caller is a child subreaper and will reap the init itself
    die_with_parent: bool = False  # the init gets SIGKILL when its reaper dies (labkit's monitor)
    console_socket: str | None = None  # --console-socket: where the pty master is sent
    no_pivot: bool = False  # --no-pivot: move the rootfs onto / and chroot, as runc does
    no_new_keyring: bool = False  # --no-new-keyring: keep the caller's session keyring
    preserve_fds: int = 0  # --preserve-fds N: fds 3..3+N-1 stay open in the container
    extra_state: dict[str, Any] = dataclasses.field(default_factory=dict)  # merged into state.json
    container_id: str = ""  # set by create_container: names the session keyring, as runc's


def _error_fields(err: BaseException) -> dict[str, Any]:
    if isinstance(err, ExecError):
        return {"message": err.what, "hint": err.hint, "exit_code": err.exit_code}
    if isinstance(err, LabkitError):
        return {"message": err.what, "hint": err.hint}
    # Not the traceback module: after pivot_root the host's Python library is out of reach.
    frames, tb = [], err.__traceback__
    while tb is not None:
        frames.append(f"{os.path.basename(tb.tb_frame.f_code.co_filename)}:{tb.tb_lineno}")
        tb = tb.tb_next
    return {"message": f"{type(err).__name__}: {err}", "hint": "a labkit bug, at " + " < ".join(reversed(frames[-4:]))}


# --- stage 1 and the container init (run in forked children; never return) ----------
def _new_and_joined(spec: Spec) -> tuple[list[str], list[tuple[str, str]]]:
    linux = spec.linux
    new = [ns.type for ns in linux.namespaces if ns.path is None] if linux else []
    joined = [(ns.type, ns.path) for ns in linux.namespaces if ns.path] if linux else []
    joined.sort(key=lambda item: item[0] != "user")  # a user namespace must be joined first
    return new, joined


def stage1(spec: Spec, bundle: str, fifo: str, chan: Channel, group: cgroups.Cgroup | None,
           opts: CreateOptions) -> None:
    try:
        set_oom_score_adj(spec.process)  # still host root, as runc's nsexec: the init inherits it
        if group is not None:  # join before unsharing: the cgroup namespace is rooted here
            group.add(os.getpid())
        new, joined = _new_and_joined(spec)
        # Opened while still host root (a user namespace would lose access).
        # O_RDWR never blocks on a FIFO: the init holds both ends until `start` writes.
        fifo_fd = os.open(fifo, os.O_RDWR | os.O_CLOEXEC)
        console = connect_console(opts.console_socket) if spec.process and spec.process.terminal else None
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
            container_init(spec, bundle, fifo_fd, chan, opts, console, group)
        chan.send("pid", pid=child)
        os._exit(0)
    except BaseException as err:  # report, never unwind into the caller's code
        chan.send("error", **_error_fields(err))
        os._exit(1)


def container_init(spec: Spec, bundle: str, fifo_fd: int, chan: Channel, opts: CreateOptions,
                   console: socket.socket | None, group: cgroups.Cgroup | None) -> None:
    try:
        go = chan.recv()
        if go.get("type") != "go":
            os._exit(1)
        if go.get("pdeathsig"):  # our parent is now the reaper: die with it
            lsys.set_pdeathsig(signal.SIGKILL)
        os.setsid()  # its own session and process group (sid = pgid = 1), as under runc
        linux = spec.linux
        if linux and linux.namespace("user"):
            os.setresgid(0, 0, 0)  # act as the mapped root, not as the overflow id
            os.setresuid(0, 0, 0)
        if not opts.no_new_keyring:  # a fresh session keyring: no keys shared with the host's session
            lsys.join_session_keyring(opts.container_id or None)
        last_cap = capabilities.last_cap()  # from /proc, which the container may not have
        # Built now, loaded just before exec: libseccomp is a host library, not in the rootfs.
        syscall_filter = seccomp.compile(linux.seccomp) if linux and linux.seccomp else None
        if hooks_of(spec).get("startContainer"):
            from .. import hooks  # noqa: F401 - imported while the host's Python library is reachable
        setup_rootfs(spec, bundle, opts.no_pivot, lambda: _create_hooks(spec, bundle, chan, opts.container_id), group)
        assert spec.process is not None
        if console is not None:  # after pivot_root: the pty comes from the container's devpts
            setup_terminal(console, spec.process)
        if spec.hostname:
            lsys.sethostname(spec.hostname)
        finish_rootfs(spec)
        program, env = finalize_process(spec.process, syscall_filter, last_cap, bool(go.get("pdeathsig")),
                                        opts.preserve_fds)
        chan.send("created")
        os.read(fifo_fd, 1)  # blocks until `start`
        chan.sock.close()
    except BaseException as err:
        chan.send("error", **_error_fields(err))
        os._exit(1)
    if hooks_of(spec).get("startContainer"):
        _start_hooks(spec, bundle, env)
    exec_program(program, spec.process.args, env)


def set_oom_score_adj(process: Any) -> None:
    """process.oomScoreAdj into /proc/self/oom_score_adj: fork and exec keep it, so the init
    and everything it starts get it. Unset: the caller's own value is inherited."""
    value = (process.extra or {}).get("oomScoreAdj") if process else None
    if value is None:
        return
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write(str(value))
    except OSError as err:
        raise ContainerError(f"process.oomScoreAdj: writing {value} to /proc/self/oom_score_adj failed: "
                             f"{err.strerror}", "lowering it below the caller's own value needs "
                             "CAP_SYS_RESOURCE: run labkit as root") from None


def finish_rootfs(spec: Spec) -> None:
    """After pivot_root and the hostname, in runc's order: linux.sysctl (while /proc/sys is
    still writable), linux.readonlyPaths, linux.maskedPaths. Then a shared or unbindable
    rootfsPropagation on the container's / — runc applies it just after pivot_root, where
    "runbindable" makes these bind mounts fail (EINVAL); applied last, the result is the same."""
    extra = spec.linux.extra if spec.linux else {}
    sysctl.write_all(extra.get("sysctl") or {})
    for path in extra.get("readonlyPaths") or []:
        _on_path("readonlyPaths", path, rootfs.readonly_path)
    for path in dict.fromkeys(extra.get("maskedPaths") or []):  # listed twice: masked once, as current runc
        _on_path("maskedPaths", path, rootfs.mask_path)
    if has_mount_namespace(spec):
        rootfs.finish_root_propagation(extra.get("rootfsPropagation") or None)


def _on_path(field: str, path: str, step: Callable[[str], None]) -> None:
    try:
        step(path)
    except OSError as err:  # a SyscallError too: say which field and path it was
        reason = err.what if isinstance(err, LabkitError) else err.strerror
        raise ContainerError(f"linux.{field}: {path}: {reason}",
                             f"a mount goes over that path in the container (runc fails the same way): remove it "
                             f"from linux.{field} if the container's files do not allow one there") from None


def hooks_of(spec: Spec) -> dict[str, Any]:
    """config.json's hooks, by kind (kept untyped in the model: labkit.hooks checks them)."""
    return spec.extra.get("hooks") or {}


def hook_state(spec: Spec, bundle: str, status: str, pid: int, container_id: str) -> dict[str, Any]:
    """The OCI state a hook reads on its stdin."""
    return {"ociVersion": spec.ociVersion, "id": container_id, "status": status, "pid": pid,
            "bundle": bundle, "annotations": spec.annotations or {}}


def _create_hooks(spec: Spec, bundle: str, chan: Channel, container_id: str) -> None:
    """prestart and createRuntime run in the runtime's namespaces: the caller runs them while
    we wait; then createContainer, here in the container's mount namespace, before pivot_root."""
    if hooks_of(spec).get("prestart") or hooks_of(spec).get("createRuntime"):
        chan.send("hooks")
        answer = chan.recv()
        if answer.get("type") != "ok":
            os._exit(1)  # the caller reports the hook's error
    if hooks_of(spec).get("createContainer"):
        from .. import hooks

        host_pid = int(os.readlink("/proc/self"))  # the host's /proc is still mounted here: our pid there
        hooks.run("createContainer", hooks_of(spec)["createContainer"],
                  hook_state(spec, bundle, "creating", host_pid, container_id), cwd=bundle)


def _start_hooks(spec: Spec, bundle: str, env: dict[str, str]) -> None:
    """startContainer: inside the container, after `start`, just before exec. A failure stops
    the container before its program runs (nobody waits on create's channel any more)."""
    from .. import hooks

    try:
        hooks.run("startContainer", hooks_of(spec)["startContainer"],
                  hook_state(spec, bundle, "running", os.getpid(), ""),  # inside: our pid and no id known
                  default_env=[f"{k}={v}" for k, v in env.items()], cwd=os.getcwd())
    except LabkitError as err:
        os.write(2, f"labkit: {err}\n".encode())
        os._exit(1)


def finalize_process(process: Any, syscall_filter: Any, last_cap: int, pdeathsig: bool,
                     preserve_fds: int) -> tuple[str, dict[str, str]]:
    """The process's own settings, in runc's order, up to the moment before exec (for the
    container's init and for `exec` alike): cwd, env, rlimits, no_new_privs, seccomp,
    capabilities, user, umask. Returns the program to exec and its environment."""
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
    if pdeathsig:
        lsys.set_pdeathsig(signal.SIGKILL)  # a change of effective uid/gid clears it
    capabilities.apply_sets(caps, last_cap)
    os.umask(user.umask if user.umask is not None else 0o022)  # runc's default, not the caller's
    program = look_path(process.args[0], env)  # as the user: a bad program fails `create`
    reset_signals()
    close_fds_from(3 + preserve_fds)
    if process.extra.get("apparmorProfile"):  # as runc, the last step but seccomp's
        apparmor.apply_on_exec(process.extra["apparmorProfile"])
    if syscall_filter is not None and process.noNewPrivileges:
        seccomp.load(syscall_filter)  # as close to exec as it can be: few calls left to allow
    return program, env


def exec_program(program: str, args: list[str], env: dict[str, str]) -> None:
    try:
        os.execve(program, args, env)
    except OSError as err:  # e.g. removed between create and start
        os.write(2, f"labkit: exec {args[0]!r}: {err.strerror}\n".encode())
        os._exit(127 if isinstance(err, FileNotFoundError) else 126)


def close_fds_from(first: int) -> None:
    """Mark every fd >= first close-on-exec (runc's CloseExecFrom): the container inherits
    stdio and the --preserve-fds, not whatever its caller happened to leave open."""
    try:
        lsys.close_range_cloexec(first)
    except OSError:  # a kernel older than 5.11: one by one (the container may have no /proc)
        for fd in range(first, min(resource.getrlimit(resource.RLIMIT_NOFILE)[0], 65536)):
            try:
                os.set_inheritable(fd, False)
            except OSError:
                pass
    for fd in range(3, first):
        try:
            os.set_inheritable(fd, True)
        except OSError:
            pass


def connect_console(path: str | None) -> socket.socket:
    """Connect to --console-socket while its host path is still reachable (before pivot_root)."""
    if not path:
        raise ContainerError("process.terminal is true but no console socket was given",
                             "pass --console-socket PATH (a unix socket that receives the pty master), "
                             "or set process.terminal to false")
    import fcntl  # noqa: F401 - for setup_terminal, loaded while the host's Python library is
    import struct  # noqa: F401   reachable (after pivot_root it is not)
    import termios  # noqa: F401
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError as err:
        sock.close()
        raise ContainerError(f"connecting to the console socket {path} failed: {err.strerror}",
                             "the caller must listen on it before create") from None
    return sock


def setup_terminal(console: socket.socket, process: Any) -> None:
    """A new pty: its slave becomes the init's stdio and controlling terminal; its master goes
    to the console socket (SCM_RIGHTS), as runc sends it to conmon or containerd-shim."""
    import fcntl
    import struct
    import termios

    master, slave = os.openpty()  # /dev/ptmx here is the container's own devpts instance
    size = (process.extra or {}).get("consoleSize") or {}
    if size:
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", size.get("height", 0), size.get("width", 0), 0, 0))
    os.fchown(slave, process.user.uid, -1)  # the container's user owns its terminal, as under runc
    socket.send_fds(console, [b"/dev/ptmx"], [master])
    console.close()
    os.close(master)
    for fd in (0, 1, 2):
        os.dup2(slave, fd)
    if slave > 2:
        os.close(slave)
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


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
    def value(v: int) -> int:  # OCI's unlimited is 2**64 - 1; Python spells it RLIM_INFINITY
        return resource.RLIM_INFINITY if v >= 2**64 - 1 else v

    for r in rlimits:
        resource.setrlimit(getattr(resource, r["type"]), (value(r["soft"]), value(r["hard"])))


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
        except ExecError:
            continue
    raise ExecError(f'exec: "{name}": executable file not found in $PATH',
                        "check process.args[0] and the PATH in process.env", 127)


def _check_executable(name: str, path: str) -> None:
    try:
        mode = os.stat(path).st_mode
    except OSError as err:
        raise ExecError(f'exec: "{name}": stat {path}: {err.strerror}',
                            "the program is not in the container's root filesystem", 127) from None
    if stat.S_ISDIR(mode) or not mode & 0o111:
        raise ExecError(f'exec: "{name}": permission denied',
                            "the program must be a file with an execute bit (chmod +x)", 126)


def setup_rootfs(spec: Spec, bundle: str, no_pivot: bool = False,
                 before_pivot: Callable[[], None] | None = None, group: cgroups.Cgroup | None = None) -> None:
    """Mounts and pivot_root, in the order the kernel needs them.

    Without a mount namespace of its own the container shares its caller's: then
    nothing is mounted and the init only chroots, as runc does — a mount or
    pivot_root there would change the root of every process on the machine.
    """
    root = spec.rootfs_path(bundle)
    if not has_mount_namespace(spec):
        rootfs.chroot_into(root)
        return
    propagation = (spec.linux.extra.get("rootfsPropagation") if spec.linux else None) or None
    if no_pivot and propagation in ("private", "rprivate"):
        raise SpecError(f"linux.rootfsPropagation {propagation!r} is not safe without pivot_root (runc refuses "
                        "it too)", "leave out --no-pivot, or use another rootfsPropagation")
    rootfs.prepare_root(root, propagation)  # before any mount: none of them may reach the host
    mount_rootfs(spec, root)
    rootfs.bind_onto_itself(root)
    for m in spec.mounts:
        source = m.source
        if source and (m.type == "bind" or "bind" in (m.options or []) or "rbind" in (m.options or [])):
            source = os.path.join(bundle, source)  # relative bind sources are bundle-relative
        if m.type == "cgroup":  # the cgroup tree as runc mounts it: per v1 hierarchy, or cgroup2
            cgroups.mount_cgroups(root, m.destination, m.options or [], group,
                                  cgroupns=bool(spec.linux and spec.linux.namespace("cgroup")))
        else:
            rootfs.mount_one(root, m.destination, m.type, source, m.options or [])
    rootfs.populate_dev(root, (spec.linux.extra.get("devices") if spec.linux else None) or [])
    if before_pivot is not None:  # the create-time hooks, while host paths are still reachable
        before_pivot()
    if no_pivot:
        rootfs.move_into(root)
    else:
        rootfs.pivot_into(root)
    if spec.root and spec.root.readonly:
        rootfs.remount_readonly_root()


def has_mount_namespace(spec: Spec) -> bool:
    """A new or joined mount namespace: not the caller's own."""
    return bool(spec.linux and spec.linux.namespace("mount"))


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


# --- create, in the caller --------------------------------------------------------------
def write_id_maps(pid: int, spec: Spec) -> None:
    linux = spec.linux
    assert linux is not None
    for name, mappings in (("uid_map", linux.uidMappings), ("gid_map", linux.gidMappings)):
        lines = "".join(f"{m.containerID} {m.hostID} {m.size}\n" for m in mappings or [])
        with open(f"/proc/{pid}/{name}", "w") as f:
            f.write(lines)


def check_spec(bundle: str) -> Spec:
    """Everything refused before any kernel object exists: the spec, and capabilities
    that this process could not give (runc would fail in capset with EPERM)."""
    spec = Spec.load(bundle).validate(bundle)
    missing = capabilities.beyond(spec.process.capabilities if spec.process else None)
    if missing:
        raise ContainerError(f"process.capabilities asks for {', '.join(missing)}, which this process does not "
                             "hold itself (its bounding set lacks it), so no container it makes can have it",
                             "leave them out of config.json, or run labkit where root keeps every capability")
    if not has_mount_namespace(spec):
        shared = [f"mounts ({', '.join(m.destination for m in spec.mounts)})"] if spec.mounts else []
        shared += ["root.readonly"] if spec.root and spec.root.readonly else []
        if shared:
            raise SpecError(f"{' and '.join(shared)} need a mount namespace of the container's own, and "
                            "linux.namespaces has none: the container shares the host's mounts, where "
                            "mounting would change every process's view",
                            'add {"type": "mount"} to linux.namespaces, or remove them')
    return spec


def create_container(container_id: str, bundle: str, root: str | None = None,
                     opts: CreateOptions | None = None) -> int:
    """Create the container, blocked before exec; its init's pid. Forks: call it only from
    a fresh single-threaded process (labkit-runc, the monitor), never from a notebook kernel.

    Whatever step fails, everything made so far is removed before the error is raised.
    """
    opts = dataclasses.replace(opts or CreateOptions(), container_id=container_id)
    bundle = os.path.abspath(bundle)
    spec = check_spec(bundle)
    directory = st.state_dir(container_id, root)
    os.makedirs(os.path.dirname(directory), exist_ok=True)
    try:
        os.mkdir(directory, 0o700)  # the mkdir reserves the id atomically
    except FileExistsError:
        raise ContainerError(f"container {container_id!r} already exists",
                             f"pick another id or delete it: labkit-runc delete {container_id}") from None
    made = _Made(directory)
    try:
        fifo = os.path.join(directory, "exec.fifo")
        os.mkfifo(fifo, 0o600)
        made.group = make_cgroup(container_id, spec)
        pid = _fork_container(spec, bundle, fifo, made, opts)
        st.write_json(os.path.join(directory, "state.json"), {
            "id": container_id, "pid": pid, "start_time": st.proc_start_time(pid), "bundle": bundle,
            "annotations": spec.annotations or {},
            "cgroup": dataclasses.asdict(made.group) if made.group else None,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            **opts.extra_state,
        })
        return pid
    except BaseException:
        made.undo(opts.reaper)
        raise


@dataclasses.dataclass
class _Made:
    """What a create has made so far, so a failure at any step can remove all of it."""

    directory: str
    group: cgroups.Cgroup | None = None
    init_pid: int = 0

    def undo(self, reaper: bool) -> None:
        if self.init_pid:
            kill_and_wait(self.init_pid, reap=reaper)
        try:
            remove_cgroup(self.group)
        except LabkitError:
            pass  # still raise the create's own error, which says what went wrong first
        shutil.rmtree(self.directory, ignore_errors=True)


def fork_stage(stage: Callable[[Channel], None]) -> tuple[int, Channel]:
    """Fork a child that runs `stage` (which never returns) on its end of a new socketpair;
    the child's pid and our end of the channel."""
    ours, theirs = socket.socketpair()
    child = os.fork()
    if child == 0:
        ours.close()
        stage(Channel(theirs))
    theirs.close()
    return child, Channel(ours)


def _fork_container(spec: Spec, bundle: str, fifo: str, made: _Made, opts: CreateOptions) -> int:
    first, chan = fork_stage(lambda theirs: stage1(spec, bundle, fifo, theirs, made.group, opts))
    try:
        msg = chan.recv()
        if msg["type"] == "userns":
            try:
                write_id_maps(first, spec)
            except OSError as err:
                chan.send("fail")
                os.waitpid(first, 0)
                raise ContainerError(f"writing uid/gid maps failed: {err}", "check linux.uidMappings") from None
            chan.send("ok")
            msg = chan.recv()
        os.waitpid(first, 0)  # stage 1 exits once it has reported: its child goes to the reaper
        if msg["type"] != "pid":
            _raise(msg)
        made.init_pid = msg["pid"]
        chan.send("go", pdeathsig=opts.die_with_parent)
        msg = chan.recv()
        if msg["type"] == "hooks":
            _run_runtime_hooks(spec, bundle, made.init_pid, opts.container_id, chan)
            msg = chan.recv()
        if msg["type"] != "created":
            _raise(msg)
        return made.init_pid
    finally:
        chan.sock.close()


def _run_runtime_hooks(spec: Spec, bundle: str, pid: int, container_id: str, chan: Channel) -> None:
    from .. import hooks

    state = hook_state(spec, bundle, "creating", pid, container_id)
    try:
        for kind in ("prestart", "createRuntime"):  # runc runs the deprecated prestart first
            hooks.run(kind, hooks_of(spec).get(kind), state, cwd=bundle)
    except LabkitError:
        chan.send("fail")
        raise
    chan.send("ok")


def _raise(msg: dict[str, Any]) -> None:
    what = msg.get("message") or "the container init exited without reporting"
    hint = msg.get("hint") or "see its stderr above"
    if "exit_code" in msg:
        raise ExecError(what, hint, msg["exit_code"])
    raise ContainerError(what, hint)


def kill_and_wait(pid: int, reap: bool = False, timeout: float = 10.0) -> None:
    """SIGKILL `pid` and wait until it has exited (reaping it if it is our child)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        os.kill(pid, signal.SIGKILL)
        select.select([fd], [], [], timeout)  # readable once the process has exited
    finally:
        os.close(fd)
    if reap:
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass


def wait_for_exit(pid: int, timeout: float | None = None) -> bool:
    """Block until `pid` (any process, not only a child) has exited; False on timeout.

    A pidfd becomes readable when the process exits: an event, not a polling loop."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([fd], [], [], timeout)[0])
    finally:
        os.close(fd)


def reap(pid: int) -> int:
    """As a subreaper: wait for `pid`, reaping the orphans reparented to us too; its exit code."""
    while True:
        try:
            done, status = os.waitpid(-1, 0)
        except ChildProcessError:
            return 255
        if done == pid:
            return namespaces.exit_code(status)


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
    if group is not None and any(os.path.isdir(d) for d in group.dirs.values()):
        group.remove()
        cgroups.remove_parents(group.name)


# --- `runc run` without --detach: this process is the container's parent ------------------
FORWARDED = [s for s in signal.valid_signals()
             if s not in (signal.SIGKILL, signal.SIGSTOP, signal.SIGCHLD, signal.SIGURG)]


def run_attached(container_id: str, bundle: str, root: str | None = None,
                 opts: CreateOptions | None = None, keep: bool = False) -> int:
    """create + start + wait + delete with this process as the reaper, as `runc run` does;
    signals this process receives are forwarded to the container's init. Forks: CLI only."""
    from .container import delete, start  # not at import: the monitor's start path does not need them

    lsys.set_child_subreaper()  # the init, and any orphan of the container, come back to us
    opts = dataclasses.replace(opts or CreateOptions(), reaper=True)
    pid = create_container(container_id, bundle, root, opts)
    previous = forward_signals(pid)
    try:
        start(container_id, root)
        code = reap(pid)
    except BaseException:
        kill_and_wait(pid, reap=True)
        raise
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if not keep:
        delete(container_id, root=root)
    return code


def forward_signals(pid: int) -> dict[int, Any]:
    """Pass every signal this process may catch on to `pid` (as `runc run` and `runc exec` do
    for the container's process); the previous handlers, to put back."""
    def forward(signum: int, frame: Any) -> None:
        os.kill(pid, signum)

    previous = {}
    for sig in FORWARDED:
        try:
            previous[sig] = signal.signal(sig, forward)
        except (OSError, ValueError):  # numbers glibc keeps for itself
            pass
    return previous
