"""OCI hooks: programs the runtime runs at fixed points of a container's life.

config.json's `hooks` lists, per kind, programs to run: {path, args, env,
timeout}. Each gets the container's state (ociVersion, id, status, pid,
bundle, annotations) as JSON on stdin. When, and where (runtime-spec
config.md "POSIX-platform Hooks", runtime.md "Lifecycle"):

  prestart, createRuntime  runtime namespace, during create, after the container's
                           namespaces exist and before pivot_root (prestart: deprecated)
  createContainer          container's mount namespace, during create, before pivot_root
  startContainer           inside the container, during start, just before exec
  poststart                runtime namespace, after the process started, before start returns
  poststop                 runtime namespace, during delete, after the container is gone

`validate` checks the `hooks` object before anything is made; `run` runs the
hooks of one kind in order, as runc's Hooks.Run does, and raises HookError for
the first one that fails (exits non-zero, is killed, or runs past its
timeout). What a failure means is the caller's part, as in runc and the spec:
every kind but poststop stops the container and fails the operation; a
failed poststop hook is only a warning (HookError.warning is True) and the
other poststop hooks still run.

Standard library only: the container's init runs createContainer and
startContainer hooks.
"""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
from collections.abc import Mapping
from typing import IO, Any

from .errors import LabkitError

KINDS = ("prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop")
WARN_ONLY = frozenset({"poststop"})  # runtime.md: a failed poststop hook is logged, delete goes on
STATE_KEYS = ("ociVersion", "id", "status", "pid", "bundle", "annotations")  # runtime.md#state, in order
OUTPUT_TAIL = 2000  # bytes of a failed hook's stdout/stderr quoted in the error


class HookError(LabkitError):
    """A hook failed; `warning` is True for kinds whose failure does not stop the operation."""

    def __init__(self, what: str, hint: str, kind: str, index: int, path: str) -> None:
        super().__init__(what, hint)
        self.kind, self.index, self.path = kind, index, path
        self.warning = kind in WARN_ONLY

    def __reduce__(self):  # picklable despite the custom __init__ (errors cross process boundaries)
        return (type(self), (self.what, self.hint, self.kind, self.index, self.path))


# --- checks ------------------------------------------------------------------------
def validate(hooks: Any) -> list[str]:
    """What is wrong with a config.json `hooks` object (empty if nothing). Paths are not
    looked up: startContainer's resolves inside the container, only when it runs."""
    if hooks is None:
        return []
    if not isinstance(hooks, Mapping):
        return ["hooks must be an object of hook lists, e.g. {\"poststart\": [{\"path\": \"/bin/true\"}]}"]
    found = []
    for kind, entries in hooks.items():
        if kind not in KINDS:
            found.append(f"hooks.{kind}: unknown hook kind (use {', '.join(KINDS)})")
        elif entries is not None and not isinstance(entries, list):
            found.append(f"hooks.{kind} must be a list of hooks")
        else:
            for i, hook in enumerate(entries or []):
                found.extend(_hook_problems(f"hooks.{kind}[{i}]", hook))
    return found


def _hook_problems(where: str, hook: Any) -> list[str]:
    if not isinstance(hook, Mapping):
        return [f"{where} must be an object with path, and optionally args, env, timeout"]
    found = []
    path = hook.get("path")
    if not isinstance(path, str) or not path:
        found.append(f"{where}.path is missing (an absolute path to the program)")
    elif not path.startswith("/"):
        found.append(f"{where}.path {path!r} must be an absolute path (the spec does not search PATH)")
    for field in ("args", "env"):
        value = hook.get(field)
        if value is not None and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            found.append(f"{where}.{field} must be a list of strings")
    for entry in hook.get("env") or []:
        if isinstance(entry, str) and "=" not in entry:
            found.append(f"{where}.env entry {entry!r} must look like NAME=value")
    timeout = hook.get("timeout")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int) or timeout <= 0):
        found.append(f"{where}.timeout must be a whole number of seconds > 0, got {timeout!r}")
    return found


# --- running -----------------------------------------------------------------------
def run(kind: str, hooks_of_kind: list[dict[str, Any]] | None, state: Mapping[str, Any], *,
        default_env: list[str] | None = None, cwd: str | None = None) -> None:
    """Run the `kind` hooks in order with `state` on stdin; HookError for the first that fails
    (for poststop: after running the others too, naming every failure).

    A hook without `env` gets `default_env`, or this process's environment if that is None:
    runc gives runtime-namespace hooks its own environment and startContainer hooks the
    process's (process.env: pass it as default_env), also when their env is []. Other hooks
    with `"env": []` get an empty one. `cwd` is where hooks start (None: here); runc's is the
    bundle under create/run, process.cwd for startContainer."""
    if kind not in KINDS:
        raise ValueError(f"unknown hook kind {kind!r}")
    data = _state_json(state)
    failures = []
    for index, hook in enumerate(hooks_of_kind or []):
        try:
            _run_one(kind, index, hook, data, _environment(kind, hook, default_env), cwd)
        except HookError as err:
            if kind not in WARN_ONLY:
                raise
            failures.append(err)
    if failures:
        raise failures[0] if len(failures) == 1 else HookError(
            "; ".join(f.what for f in failures), failures[0].hint, kind, failures[0].index, failures[0].path)


def _state_json(state: Mapping[str, Any]) -> bytes:
    """The state as runc writes it: compact, in the spec's order, without a zero pid or empty
    annotations (Go's omitempty: no pid once the container is stopped)."""
    ordered = {k: state[k] for k in STATE_KEYS if k in state}
    ordered.update((k, v) for k, v in state.items() if k not in ordered)
    for key in ("pid", "annotations"):
        if not ordered.get(key):
            ordered.pop(key, None)
    return json.dumps(ordered, separators=(",", ":")).encode()


def _environment(kind: str, hook: Mapping[str, Any], default_env: list[str] | None) -> dict[str, str] | None:
    """The hook's environment for Popen (None: inherit ours). runc's quirk kept: a startContainer
    hook with an empty env gets the default one too (libcontainer's HookList.SetDefaultEnv)."""
    env = hook.get("env")
    if env is None or (kind == "startContainer" and not env):
        if default_env is None:
            return None
        env = default_env
    return dict(entry.split("=", 1) for entry in env if "=" in entry)


def _run_one(kind: str, index: int, hook: Mapping[str, Any], state: bytes,
             env: dict[str, str] | None, cwd: str | None) -> None:
    path = hook["path"]
    argv = hook.get("args") or [path]  # args[0] is argv[0]; no args: argv is [path], as in Go's exec
    timeout = hook.get("timeout")
    where = f"{kind} hook #{index} ({path})"
    # Files, not pipes: a hook that leaves a background child holding its stdout cannot make us
    # wait for that child, and the state can be read, or not, at the hook's leisure.
    with _scratch("state") as stdin, _scratch("stdout") as stdout, _scratch("stderr") as stderr:
        stdin.write(state)
        stdin.seek(0)
        try:
            proc = subprocess.Popen(argv, executable=path, stdin=stdin, stdout=stdout, stderr=stderr,
                                    env=env, cwd=cwd)
        except OSError as err:
            raise HookError(f"{where} could not be started: {err.strerror}", _start_hint(kind, err),
                            kind, index, path) from None
        try:
            status = proc.wait(timeout=timeout)
        except BaseException as err:
            proc.kill()  # the hook only, as runc does: its own children are left alone
            proc.wait()
            if not isinstance(err, subprocess.TimeoutExpired):
                raise  # e.g. KeyboardInterrupt: no hook is left running behind us
            raise HookError(f"{where} ran past its timeout of {timeout}s and was killed{_output(stdout, stderr)}",
                            f"make it finish sooner, or raise hooks.{kind}[{index}].timeout", kind, index, path) from None
        if status != 0:
            raise HookError(f"{where} {_status_text(status)}{_output(stdout, stderr)}",
                            f"its output above says why; try it by hand: {path} < state.json "
                            "(the container's state as JSON)", kind, index, path)


def _scratch(name: str) -> IO[bytes]:
    """An unnamed file: memfd needs no writable directory (startContainer hooks run inside the
    container, whose /tmp may be read-only); a temp file if memfd is refused."""
    try:
        return os.fdopen(os.memfd_create(f"labkit-hook-{name}", os.MFD_CLOEXEC), "w+b")
    except (AttributeError, OSError):
        import tempfile  # only when needed: the init runs this module
        return tempfile.TemporaryFile()


def _status_text(status: int) -> str:
    if status < 0:
        try:
            return f"was killed by signal {signal.Signals(-status).name}"
        except ValueError:
            return f"was killed by signal {-status}"
    return f"exited with status {status}"


def _output(stdout: IO[bytes], stderr: IO[bytes]) -> str:
    """`, stdout: ..., stderr: ...` (their last OUTPUT_TAIL bytes), as runc quotes them."""
    parts = []
    for name, f in (("stdout", stdout), ("stderr", stderr)):
        size = f.seek(0, os.SEEK_END)
        f.seek(max(0, size - OUTPUT_TAIL))
        text = f.read().decode(errors="replace").strip()
        if text:
            parts.append(f"{name}: {'...' if size > OUTPUT_TAIL else ''}{text}")
    return ("; " + "; ".join(parts)) if parts else ""


def _start_hint(kind: str, err: OSError) -> str:
    where = "inside the container" if kind == "startContainer" else "on the host"
    if err.errno == errno.ENOENT:
        return f"the program must exist {where} at that absolute path"
    if err.errno == errno.EACCES:
        return "the program must be executable (chmod +x) and its directories searchable"
    if err.errno == errno.ENOEXEC:
        return "a script needs a #! line naming its interpreter"
    return f"check the program at that path {where}"
