"""The OCI runtime operations: create, start, state, kill, delete — and run.

The caller (a notebook kernel, the CLI, a test) never forks: `create` starts
the shim program (labkit.runtime.init) with subprocess and waits until it
reports the container created, blocked before exec. `start` releases it by
writing to exec.fifo. The shim outlives the caller and records the exit code.
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

from .. import capabilities, cgroups
from ..errors import ContainerError, LabkitError
from . import store as st
from .spec import Spec

# Shims this process started, so their exit status is collected (no zombies).
_SHIMS: dict[str, subprocess.Popen] = {}
Stream = int | IO[Any] | None


class ExecError(ContainerError):
    """process.args[0] is missing or not executable: `create` fails, as in runc.

    `exit_code` is what a shell (and `docker run`) reports for it: 127 or 126.
    """

    def __init__(self, what: str, hint: str, exit_code: int) -> None:
        super().__init__(what, hint)
        self.exit_code = exit_code


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
    """Create a container from a bundle; it waits before exec until `start`.

    Returns the shim's Popen: with stdout/stderr=subprocess.PIPE its pipes
    carry the container's output.
    """
    bundle = os.path.abspath(bundle)
    spec = Spec.load(bundle).validate(bundle)  # refuse bad specs before any kernel object
    missing = capabilities.beyond(spec.process.capabilities if spec.process else None)
    if missing:
        raise ContainerError(f"process.capabilities asks for {', '.join(missing)}, which this process does not "
                             "hold itself (its bounding set lacks it), so no container it makes can have it",
                             "leave them out of config.json, or run labkit where root keeps every capability")
    directory = st.state_dir(container_id, root)
    os.makedirs(os.path.dirname(directory), exist_ok=True)
    try:
        os.mkdir(directory, 0o700)  # the mkdir reserves the id atomically
    except FileExistsError:
        raise ContainerError(f"container {container_id!r} already exists",
                             f"pick another id or delete it: labkit-runc delete {container_id}") from None
    os.mkfifo(os.path.join(directory, "exec.fifo"), 0o600)
    ready_r, ready_w = os.pipe()
    # -S: no site module. The shim needs only the standard library and labkit (found through
    # PYTHONPATH, see _shim_env); site's .pth processing (an editable install's import hook)
    # would add ~10 ms to every container start. Should the shim ever need a package from
    # site-packages, drop -S or put that directory on PYTHONPATH in _shim_env.
    cmd = [sys.executable, "-S", "-m", "labkit.runtime.init", "--id", container_id,
           "--bundle", bundle, "--state-dir", directory, "--ready-fd", str(ready_w)]
    try:
        shim = subprocess.Popen(cmd, stdin=stdin, stdout=stdout, stderr=stderr,
                                pass_fds=(ready_w,), start_new_session=True, text=text,
                                env=_shim_env())
    except BaseException:
        os.close(ready_r)
        shutil.rmtree(directory, ignore_errors=True)
        raise
    finally:
        os.close(ready_w)
    with os.fdopen(ready_r, "rb") as ready:
        reply = ready.read()
    answer = json.loads(reply) if reply else {"error": "the shim exited without reporting",
                                              "hint": "see the stderr above"}
    if "error" in answer:
        _, err = shim.communicate() if shim.stdout or shim.stderr else (None, None)
        shim.wait()
        if err and not reply:
            answer["hint"] = f"the shim said: {err.strip() if isinstance(err, str) else err.decode().strip()}"
        shutil.rmtree(directory, ignore_errors=True)
        message = f"creating container {container_id!r} failed: {answer['error']}"
        if "exit_code" in answer:
            raise ExecError(message, answer.get("hint", ""), answer["exit_code"])
        raise ContainerError(message, answer.get("hint", ""))
    _SHIMS[directory] = shim
    del spec
    return shim


def _shim_env() -> dict[str, str]:
    """Make sure the shim imports this same labkit, wherever it is installed."""
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


def kill(container_id: str, sig: int | str = "TERM", root: str | None = None) -> None:
    """Send a signal to the container's init (its PID 1)."""
    current = st.load(container_id, root)
    if current.status not in ("created", "running", "paused"):
        raise ContainerError(f"container {container_id!r} is {current.status}",
                             "only a created, running or paused container can be signalled")
    os.kill(current.pid, parse_signal(sig))


def wait(container_id: str, timeout: float | None = None, root: str | None = None) -> int:
    """Wait for the container to stop; its exit code."""
    directory = st.state_dir(container_id, root)
    shim = _SHIMS.get(directory)
    if shim is not None:
        try:
            shim.wait(timeout)
        except subprocess.TimeoutExpired:
            raise ContainerError(f"container {container_id!r} still runs after {timeout}s",
                                 "kill it: labkit-runc kill ID KILL") from None
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        current = st.load(container_id, root)
        if current.status == "stopped" and (current.exit_code is not None or not _alive(current.shim_pid)):
            return current.exit_code if current.exit_code is not None else 255
        if deadline is not None and time.monotonic() > deadline:
            raise ContainerError(f"container {container_id!r} still runs after {timeout}s",
                                 "kill it: labkit-runc kill ID KILL")
        time.sleep(0.01)


def _alive(pid: int) -> bool:
    return st.proc_start_time(pid) is not None


def delete(container_id: str, force: bool = False, root: str | None = None) -> None:
    """Remove a stopped container's state; with force, kill it first."""
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
                pass  # it died (at once on v2, or as the thaw began) and its shim is removing the
                # group under our feet; were it still frozen, the wait below would say so
    wait(container_id, timeout=10, root=root)
    if current.cgroup:  # normally the shim removed it; not if the shim itself was killed
        group = cgroups.Cgroup(**current.cgroup)
        if any(os.path.isdir(d) for d in group.dirs.values()):
            group.remove()
            cgroups.remove_parents(group.name)
    directory = st.state_dir(container_id, root)
    _SHIMS.pop(directory, None)
    shutil.rmtree(directory)


def list_containers(root: str | None = None) -> list[st.State]:
    return [st.load(i, root) for i in st.list_ids(root)]


def run(bundle: str, container_id: str | None = None, capture: bool = True,
        input: str | None = None, timeout: float | None = None,
        root: str | None = None) -> Result:
    """create + start + wait + delete, like `runc run`: the exit code and output."""
    container_id = container_id or "run-" + os.urandom(6).hex()  # uuid4().hex[:12], without importing uuid
    pipe = subprocess.PIPE if capture else None
    shim = create(container_id, bundle, stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                  stdout=pipe, stderr=pipe, root=root)
    try:
        start(container_id, root)
        out, err = shim.communicate(input, timeout=timeout)
    except BaseException:
        delete(container_id, force=True, root=root)
        raise
    code = wait(container_id, root=root)
    delete(container_id, root=root)
    return Result(container_id, code, out, err)
