"""The container monitor: conmon's role, between a caller and the runtime.

`python -m labkit.monitor --id ID --bundle DIR --root DIR --ready-fd FD`

The runtime does what runc does and no more: `create` leaves the container's
init blocked before exec and returns, and the init goes to the caller's nearest
child subreaper. A notebook kernel or a short CLI cannot be that reaper, so
this small process is: it marks itself a child subreaper, creates the
container (labkit.runtime.init.create_container, in this process), tells the
caller on --ready-fd, and then stays as the init's parent until it exits:
  - it owns the container's stdio (whatever stdin/stdout/stderr it was given),
  - it collects the exit status and the cgroup's final counters (OOM kills)
    into exit.json in the container's state directory,
  - the container dies with it (PR_SET_PDEATHSIG), so nothing runs unwatched.
Removing the container (cgroup, state) stays the runtime's `delete`.

Ready message, one JSON line: {"pid": P} or {"error", "hint"[, "exit_code"]}. (A line, not
EOF: the container's init holds a copy of the pipe until it execs.)
"""
from __future__ import annotations

import json
import os
import sys

from .errors import LabkitError
from .runtime import init, store

OPTIONS = ("--id", "--bundle", "--root", "--ready-fd")
USAGE = "usage: python -m labkit.monitor --id ID --bundle DIR --root DIR --ready-fd FD"


def monitor(container_id: str, bundle: str, root: str, ready_fd: int) -> int:
    from . import sys as lsys

    lsys.set_child_subreaper()  # the container init is reparented to us when stage 1 exits
    opts = init.CreateOptions(reaper=True, die_with_parent=True, extra_state={"monitor_pid": os.getpid(), "monitor_start": store.proc_start_time(os.getpid())})
    try:
        pid = init.create_container(container_id, bundle, root, opts)
    except LabkitError as err:
        reply = {"error": err.what, "hint": err.hint}
        if isinstance(err, init.ExecError):
            reply["exit_code"] = err.exit_code
        os.write(ready_fd, json.dumps(reply).encode() + b"\n")
        return 1
    os.write(ready_fd, json.dumps({"pid": pid}).encode() + b"\n")
    os.close(ready_fd)
    _detach_stdio()
    code = init.reap(pid)
    saved = store.read_json(os.path.join(store.state_dir(container_id, root), "state.json")) or {}
    group = init.cgroups.Cgroup(**saved["cgroup"]) if saved.get("cgroup") else None
    final = init.final_stats(group)  # e.g. whether the OOM killer struck (`docker inspect`'s OOMKilled)
    directory = store.state_dir(container_id, root)
    if os.path.isdir(directory):  # a forced delete may have removed it already
        store.write_json(os.path.join(directory, "exit.json"),
                         {"exit_code": code, **({"cgroup_stats": final} if final is not None else {})})
    return code


def _detach_stdio() -> None:
    """Let the caller's pipes reach EOF when the container closes them, not us."""
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)


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
        print(f"{USAGE}\nlabkit.monitor: error: {err}", file=sys.stderr)
        return 2
    return monitor(opts["--id"], opts["--bundle"], opts["--root"], int(opts["--ready-fd"]))


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # skip the interpreter's teardown: the container's exit code is already recorded
