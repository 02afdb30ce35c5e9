"""exec: a new process in a running container, as `runc exec` (runc's setns init).

The process joins everything the container's init has — its cgroup, its
namespaces (user first), its root (entering the mount namespace moves the
root and cwd there) — and then gets the settings of its own OCI `process`
object (process.json or the command line): env, cwd, user, capabilities,
rlimits, no_new_privs, a terminal; and the container's seccomp filter.

Like create, it forks in two steps: the first child joins the namespaces (a
new PID namespace only applies to children) and forks the process itself,
then exits, so the process goes to the caller's nearest child subreaper
(`labkit-runc exec` itself without --detach; conmon with it). Forks: call it
only from a fresh single-threaded process (the CLI), never a notebook kernel.
"""
from __future__ import annotations

import os
import socket
from typing import Any

from .. import capabilities, cgroups, namespaces, seccomp
from .. import sys as lsys
from ..errors import ContainerError, SpecError
from . import store as st
from .init import (Channel, _error_fields, _raise, connect_console, exec_program, finalize_process, fork_stage,
                   kill_and_wait, setup_terminal)
from .spec import Process, Spec

# The order runc's nsexec joins them in: user first (the others are then joined as its root),
# mount before pid's child is forked so the process's root is the container's.
JOIN_ORDER = ("user", "ipc", "uts", "network", "pid", "mount", "cgroup")


def load_process(data: Any) -> Process:
    """An OCI process object (process.json), checked as config.json's process is."""
    if not isinstance(data, dict):
        raise SpecError("the process must be a JSON object", "see the OCI runtime spec, config.md#process")
    spec = Spec.from_dict({"ociVersion": "1.0.2", "process": data, "root": {"path": "/"}})
    spec.validate()
    assert spec.process is not None
    return spec.process


def exec_in(container_id: str, process: Process, root: str | None = None, console_socket: str | None = None,
            preserve_fds: int = 0, reaper: bool = False) -> int:
    """Start `process` in the running container; the new process's pid (not yet reaped).
    `reaper`: the caller is a child subreaper, so a process that failed to start is its to reap."""
    current = st.load(container_id, root)
    if current.status != "running":
        raise ContainerError(f"cannot exec in a {current.status} container ({container_id!r})",
                             "exec needs a running container: start or resume it first")
    spec = Spec.load(current.bundle)
    group = cgroups.Cgroup(**current.cgroup) if current.cgroup else None
    first, chan = fork_stage(lambda theirs: _join(current.pid, spec, process, group, theirs, console_socket,
                                                  preserve_fds))
    try:
        msg = chan.recv()
        os.waitpid(first, 0)
        if msg["type"] != "pid":
            _raise(msg)
        pid = msg["pid"]
        chan.send("go")
        msg = chan.recv()
        if msg["type"] != "ready":
            # It has exited, or will: whoever reaps it must, or the container's PID 1 can never
            # finish dying (it waits for every process of its namespace to be reaped).
            kill_and_wait(pid, reap=reaper)
            _raise(msg)
        return pid
    finally:
        chan.sock.close()


def _join(init_pid: int, spec: Spec, process: Process, group: cgroups.Cgroup | None, chan: Channel,
          console_socket: str | None, preserve_fds: int) -> None:
    try:
        if group is not None:
            group.add(os.getpid())
        console = connect_console(console_socket) if process.terminal else None
        linux = spec.linux
        # Before joining the mount namespace: libseccomp and /proc are the host's, not the container's.
        last_cap = capabilities.last_cap()
        syscall_filter = seccomp.compile(linux.seccomp) if linux and linux.seccomp else None
        # Opened before joining any: once in the container's user or mount namespace, the
        # host's /proc/PID of the init may no longer be reachable.
        fds = [(t, os.open(f"/proc/{init_pid}/ns/{namespaces.proc_name(t)}", os.O_RDONLY | os.O_CLOEXEC))
               for t in JOIN_ORDER if linux and linux.namespace(t)]
        for ns_type, fd in fds:
            lsys.setns(fd, 0)
            os.close(fd)
        child = os.fork()
        if child == 0:
            _finish(spec, process, chan, console, preserve_fds, syscall_filter, last_cap)
        chan.send("pid", pid=child)
        os._exit(0)
    except BaseException as err:
        chan.send("error", **_error_fields(err))
        os._exit(1)


def _finish(spec: Spec, process: Process, chan: Channel, console: socket.socket | None, preserve_fds: int,
            syscall_filter: Any, last_cap: int) -> None:
    try:
        if chan.recv().get("type") != "go":
            os._exit(1)
        os.setsid()
        linux = spec.linux
        if linux and linux.namespace("user"):
            os.setresgid(0, 0, 0)
            os.setresuid(0, 0, 0)
        if console is not None:
            setup_terminal(console, process)
        program, env = finalize_process(process, syscall_filter, last_cap, False, preserve_fds)
        chan.send("ready")
        chan.sock.close()
    except BaseException as err:
        chan.send("error", **_error_fields(err))
        os._exit(1)
    exec_program(program, process.args, env)
