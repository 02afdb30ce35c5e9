"""The OCI runtime operations: create, start, state, kill, delete — and run.

The caller (a notebook kernel, a test) never forks: `create` starts labkit's
monitor (`python -m labkit.monitor`, conmon's role) with subprocess; the
monitor creates the container through the runtime (labkit.runtime.init, as
`labkit-runc create` does) and stays as its reaper, owning its stdio and
recording its exit code. `start` releases the init by writing to exec.fifo.
The container outlives the caller; `delete` removes its cgroup and state.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal as _signal
import subprocess
import sys
import time
from typing import IO, Any

from .. import cgroups, settings
from ..errors import ContainerError, LabkitError
from . import store as st
from .init import ExecError, check_spec, hook_state, hooks_of, remove_cgroup, wait_for_exit
from .spec import Spec

# Monitors this process started, so their exit status is collected (no zombies).
_MONITORS: dict[str, subprocess.Popen] = {}
Stream = int | IO[Any] | None
__all__ = ["ExecError"]


@dataclasses.dataclass
class Result:
    """What `run` returns: the exit code and the container's output."""

    id: str
    exit_code: int
    stdout: str | bytes | None
    stderr: str | bytes | None

    def __repr__(self) -> str:
        return f"Result(id={self.id!r}, exit_code={self.exit_code}, stdout={self.stdout!r}, stderr={self.stderr!r})"


def create(container_id: str, bundle: str, stdin: Stream = subprocess.DEVNULL,
           stdout: Stream = None, stderr: Stream = None, root: str | None = None,
           text: bool = True) -> subprocess.Popen:
    """Create a container from a bundle under labkit's monitor; it waits before exec until `start`.

    Returns the monitor's Popen: with stdout/stderr=subprocess.PIPE its pipes
    carry the container's output.
    """
    bundle = os.path.abspath(bundle)
    check_spec(bundle)  # refuse bad specs here, before a monitor process is even started
    root = root or settings.runtime_root()
    st.check_id(container_id)
    ready_r, ready_w = os.pipe()
    # -S: no site module. The monitor needs only the standard library and labkit (found through
    # PYTHONPATH, see _monitor_env); site's .pth processing (an editable install's import hook)
    # would add ~10 ms to every container start. Should it ever need a package from
    # site-packages, drop -S or put that directory on PYTHONPATH in _monitor_env.
    cmd = [sys.executable, "-S", "-m", "labkit.monitor", "--id", container_id,
           "--bundle", bundle, "--root", root, "--ready-fd", str(ready_w)]
    try:
        monitor = subprocess.Popen(cmd, stdin=stdin, stdout=stdout, stderr=stderr,
                                   pass_fds=(ready_w,), start_new_session=True, text=text,
                                   env=_monitor_env())
    except BaseException:
        os.close(ready_r)
        raise
    finally:
        os.close(ready_w)
    with os.fdopen(ready_r, "rb") as ready:
        reply = ready.readline()  # one line: the container's init holds the pipe until it execs
    answer = json.loads(reply) if reply else {"error": "the monitor exited without reporting",
                                              "hint": "see the stderr above"}
    if "error" in answer:
        _, err = monitor.communicate() if monitor.stdout or monitor.stderr else (None, None)
        monitor.wait()
        if err and not reply:
            answer["hint"] = f"the monitor said: {err.strip() if isinstance(err, str) else err.decode().strip()}"
        message = f"creating container {container_id!r} failed: {answer['error']}"
        if "exit_code" in answer:
            raise ExecError(message, answer.get("hint", ""), answer["exit_code"])
        raise ContainerError(message, answer.get("hint", ""))
    _MONITORS[st.state_dir(container_id, root)] = monitor
    return monitor


def _monitor_env() -> dict[str, str]:
    """Make sure the monitor imports this same labkit, wherever it is installed."""
    env = dict(os.environ)
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = here + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def start(container_id: str, root: str | None = None) -> None:
    """Release a created container; returns once its init has exec'd process.args."""
    state = st.load(container_id, root)
    if state.status != "created":
        raise ContainerError(f"container {container_id!r} is {state.status}, not created",
                             "only a created container can be started; create a new one")
    fifo = os.path.join(st.state_dir(container_id, root), "exec.fifo")
    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError as err:  # ENXIO: nobody holds the read end any more
        raise ContainerError(f"container {container_id!r} is not waiting for start: {err.strerror}",
                             "it may have been killed; delete it and create it again") from None
    try:
        os.write(fd, b"\0")
    finally:
        os.close(fd)
    _wait_for_exec(fifo)
    os.unlink(fifo)
    spec = Spec.load(state.bundle)
    if hooks_of(spec).get("poststart"):
        from .. import hooks

        try:
            hooks.run("poststart", hooks_of(spec)["poststart"],
                      hook_state(spec, state.bundle, "running", state.pid, container_id), cwd=state.bundle)
        except hooks.HookError:  # as runc: the container does not run on after a failed poststart
            kill(container_id, "KILL", root)
            raise


def _wait_for_exec(fifo: str, timeout: float = 10.0) -> None:
    """The init holds exec.fifo open (close-on-exec) until it execs: once nobody
    holds it, opening it for writing fails with ENXIO, and the program runs."""
    deadline = time.monotonic() + timeout
    pause = 0.0002
    while time.monotonic() < deadline:
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            return
        time.sleep(pause)
        pause = min(pause * 2, 0.01)


def state(container_id: str, root: str | None = None) -> st.State:
    """The container's state (see State.oci() for the OCI JSON)."""
    return st.load(container_id, root)


SIGNALS = {name[3:]: sig for name, sig in _signal.Signals.__members__.items() if name.startswith("SIG")
           and not name.startswith("SIG_")}


def parse_signal(sig: int | str) -> int:
    if isinstance(sig, int) or str(sig).isdigit():
        return int(sig)
    name = str(sig).upper().removeprefix("SIG")
    if name not in SIGNALS:
        raise LabkitError(f"unknown signal {sig!r}", "use a name like TERM or KILL, or a number")
    return int(SIGNALS[name])


def cgroup(container_id: str, root: str | None = None) -> cgroups.Cgroup:
    """The container's cgroup, for limits and accounting (`docker stats`)."""
    saved = st.load(container_id, root).cgroup
    if not saved:
        raise ContainerError(f"container {container_id!r} has no cgroup",
                             "give its spec linux.resources or linux.cgroupsPath")
    return cgroups.Cgroup(**saved)


def pause(container_id: str, root: str | None = None) -> None:
    """Freeze every process of the container (the cgroup freezer)."""
    current = st.load(container_id, root)
    if current.status != "running":
        raise ContainerError(f"container {container_id!r} is {current.status}", "only a running container can be paused")
    cgroup(container_id, root).freeze()
    open(os.path.join(st.state_dir(container_id, root), "paused"), "w").close()


def resume(container_id: str, root: str | None = None) -> None:
    current = st.load(container_id, root)
    if current.status != "paused":
        raise ContainerError(f"container {container_id!r} is {current.status}", "only a paused container can be resumed")
    cgroup(container_id, root).thaw()
    os.unlink(os.path.join(st.state_dir(container_id, root), "paused"))


def kill(container_id: str, sig: int | str = "TERM", root: str | None = None, all: bool = False) -> None:
    """Send a signal to the container's init (its PID 1), or with `all` to every process
    in its cgroup (runc kill --all)."""
    current = st.load(container_id, root)
    if current.status not in ("created", "running", "paused"):
        raise ContainerError(f"container {container_id!r} is {current.status}",
                             "only a created, running or paused container can be signalled")
    number = parse_signal(sig)
    if not all:
        os.kill(current.pid, number)
        return
    for pid in cgroup(container_id, root).pids():
        try:
            os.kill(pid, number)
        except ProcessLookupError:
            pass


def wait(container_id: str, timeout: float | None = None, root: str | None = None) -> int:
    """Wait for the container to stop; its exit code, as its monitor recorded it.

    Blocks on an event (the monitor's exit, through a pidfd), never a polling loop.
    A container made by `labkit-runc create` has no monitor: its exit status went
    to its reaper (conmon, containerd-shim, ...), so only that one knows it.
    """
    directory = st.state_dir(container_id, root)
    current = st.load(container_id, root)
    still = ContainerError(f"container {container_id!r} still runs after {timeout}s",
                           "kill it: labkit-runc kill ID KILL")
    monitor = _MONITORS.get(directory)
    if monitor is not None:
        try:
            monitor.wait(timeout)
        except subprocess.TimeoutExpired:
            raise still from None
    elif _monitor_alive(current):
        if not wait_for_exit(current.monitor_pid, timeout):
            raise still
    elif current.status != "stopped":
        if not wait_for_exit(current.pid, timeout):
            raise still
    current = st.load(container_id, root)
    if current.exit_code is None:
        if current.monitor_pid:
            raise ContainerError(f"the monitor of container {container_id!r} ended without recording an exit code",
                                 "it was killed, and the container died with it (SIGKILL)")
        raise ContainerError(f"container {container_id!r} has stopped; its exit status went to its parent",
                             "it was made without labkit's monitor (labkit-runc create): ask the process that "
                             "reaped it (conmon, containerd-shim, a subreaper)")
    return current.exit_code


def _monitor_alive(current: st.State) -> bool:
    return bool(current.monitor_pid) and st.proc_start_time(current.monitor_pid) == current.monitor_start


def delete(container_id: str, force: bool = False, root: str | None = None) -> None:
    """Remove a stopped container: its cgroup and its state. With force, kill it first."""
    current = st.load(container_id, root)
    if current.status in ("created", "running", "paused"):
        if not force:
            raise ContainerError(f"container {container_id!r} is {current.status}",
                                 "stop it first (kill ... KILL) or delete with force")
        os.kill(current.pid, _signal.SIGKILL)
        if current.status == "paused":  # on cgroup v1 a frozen task dies only once thawed
            try:
                cgroup(container_id, root).thaw()
            except (cgroups.CgroupError, OSError):
                pass  # it died at once (v2); were it still frozen, the wait below would say so
        if not wait_for_exit(current.pid, 10):
            raise ContainerError(f"container {container_id!r} did not die from SIGKILL within 10 s",
                                 "a PID 1 dies only once every process of its PID namespace is reaped: one may "
                                 "be a zombie its reaper has not wait()ed for, or stuck in the kernel (D state); "
                                 "see `ps -o pid,ppid,stat`")
    directory = st.state_dir(container_id, root)
    monitor = _MONITORS.pop(directory, None)
    if monitor is not None:  # our child: reap it once it has recorded the exit
        monitor.wait(10)
    elif _monitor_alive(current):
        wait_for_exit(current.monitor_pid, 10)
    remove_cgroup(cgroups.Cgroup(**current.cgroup) if current.cgroup else None)
    try:
        _poststop(current, container_id)
    finally:
        shutil.rmtree(directory)


def _poststop(current: st.State, container_id: str) -> None:
    """poststop hooks, once the container is gone; a failure is raised as a warning
    (HookError.warning) after the state is removed, as runc logs it and deletes anyway."""
    try:
        spec = Spec.load(current.bundle)
    except LabkitError:  # the bundle is gone: nothing to run
        return
    if hooks_of(spec).get("poststop"):
        from .. import hooks

        hooks.run("poststop", hooks_of(spec)["poststop"],
                  hook_state(spec, current.bundle, "stopped", 0, container_id), cwd=current.bundle)


def list_containers(root: str | None = None) -> list[st.State]:
    return [st.load(i, root) for i in st.list_ids(root)]


def run(bundle: str, container_id: str | None = None, capture: bool = True,
        input: str | None = None, timeout: float | None = None,
        root: str | None = None) -> Result:
    """create + start + wait + delete, like `runc run`: the exit code and output."""
    container_id = container_id or "run-" + os.urandom(6).hex()  # uuid4().hex[:12], without importing uuid
    pipe = subprocess.PIPE if capture else None
    monitor = create(container_id, bundle, stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                     stdout=pipe, stderr=pipe, root=root)
    try:
        start(container_id, root)
        out, err = monitor.communicate(input, timeout=timeout)
    except BaseException:
        delete(container_id, force=True, root=root)
        raise
    code = wait(container_id, root=root)
    delete(container_id, root=root)
    return Result(container_id, code, out, err)
