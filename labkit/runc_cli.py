"""`labkit-runc`: the OCI runtime command line, as runc spells it (runtime.md "Operations").

podman (through conmon) and containerd (through its shim) call a runtime with
this grammar: global options, a verb, its options, the container id. The
verbs do what runc's do and no more: `create` leaves the container blocked
before exec and exits, so the container's init goes to the caller (a child
subreaper) and the caller collects its exit status.

Errors go to stderr and, with --log, to that file as runc writes them
(logrus text, or JSON lines with --log-format json); the exit code is 1.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from typing import Any

from . import runtime
from .errors import LabkitError

VERBS = {
    "spec": "write a default config.json (runc spec's)",
    "create": "create a container, blocked before its program runs",
    "start": "start a created container's program",
    "run": "create and start a container, and wait for it (unless --detach)",
    "state": "print the OCI state of a container",
    "kill": "send a signal to a container's init (or all its processes)",
    "delete": "remove a stopped container (--force: kill it first)",
    "list": "list the containers",
    "pause": "freeze every process of a container",
    "resume": "thaw a paused container",
    "ps": "the processes of a container",
    "exec": "run a new process in a running container",
    "update": "change a running container's cgroup limits",
    "events": "a container's statistics and OOM events (--stats: once)",
}


class Log:
    """--log / --log-format: where runc writes its messages, and how."""

    def __init__(self, path: str | None, fmt: str, debug: bool) -> None:
        self.path, self.fmt, self.debug_on = path, fmt, debug

    def write(self, level: str, msg: str) -> None:
        if not self.path:
            return
        now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")
        if self.fmt == "json":
            line = json.dumps({"level": level, "msg": msg, "time": now})
        else:
            line = f'time="{now}" level={level} msg={json.dumps(msg)}'
        with open(self.path, "a") as f:
            f.write(line + "\n")

    def debug(self, msg: str) -> None:
        if self.debug_on:
            self.write("debug", msg)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="labkit-runc", description="An OCI runtime (runc's command line), in Python.")
    p.add_argument("--root", help="state directory (default: $LABKIT_RUN_ROOT/runtime)")
    p.add_argument("--log", help="write runtime messages to this file (as runc)")
    p.add_argument("--log-format", choices=("text", "json"), default="text", help="the --log file's format")
    p.add_argument("--debug", action="store_true", help="also log each operation (to --log)")
    p.add_argument("--systemd-cgroup", action="store_true",
                   help="refused: labkit manages cgroups through cgroupfs only")
    sub = p.add_subparsers(dest="verb", required=True, metavar="COMMAND")
    verbs = {name: sub.add_parser(name, help=text, description=text) for name, text in VERBS.items()}
    verbs["spec"].add_argument("-b", "--bundle", default=".")
    verbs["spec"].add_argument("--rootless", action="store_true", help="refused: labkit-runc runs as root")
    for name in ("create", "run"):
        v = verbs[name]
        v.add_argument("-b", "--bundle", default=".", help="the bundle directory (config.json + rootfs)")
        v.add_argument("--pid-file", help="write the container init's pid here")
        v.add_argument("--console-socket", help="a unix socket that receives the pty master (process.terminal)")
        v.add_argument("--no-pivot", action="store_true", help="move the rootfs onto / and chroot, not pivot_root")
        v.add_argument("--no-new-keyring", action="store_true", help="keep the caller's session keyring")
        v.add_argument("--preserve-fds", type=int, default=0, help="pass fds 3..3+N-1 on to the container")
        v.add_argument("id")
    verbs["run"].add_argument("-d", "--detach", action="store_true", help="return once started")
    verbs["run"].add_argument("--keep", action="store_true", help="do not delete the container after it exits")
    for name in ("start", "state", "pause", "resume"):
        verbs[name].add_argument("id")
    verbs["kill"].add_argument("-a", "--all", action="store_true", help="signal every process in its cgroup")
    verbs["kill"].add_argument("id")
    verbs["kill"].add_argument("signal", nargs="?", default="TERM")
    verbs["delete"].add_argument("-f", "--force", action="store_true")
    verbs["delete"].add_argument("id")
    verbs["list"].add_argument("-f", "--format", choices=("table", "json"), default="table")
    verbs["list"].add_argument("-q", "--quiet", action="store_true")
    verbs["ps"].add_argument("-f", "--format", choices=("table", "json"), default="table")
    verbs["ps"].add_argument("id")
    verbs["ps"].add_argument("ps_args", nargs=argparse.REMAINDER, help="options for ps(1) (default -ef)")
    e = verbs["exec"]
    e.add_argument("-p", "--process", help="a process.json (OCI process object) to run instead of COMMAND")
    e.add_argument("-t", "--tty", action="store_true", help="a pseudo-terminal (needs --console-socket)")
    e.add_argument("--console-socket")
    e.add_argument("-d", "--detach", action="store_true")
    e.add_argument("--pid-file")
    e.add_argument("-e", "--env", action="append", default=[], metavar="KEY=VALUE")
    e.add_argument("-u", "--user", help="UID[:GID]")
    e.add_argument("--additional-gids", action="append", type=int, default=[])
    e.add_argument("--cwd")
    e.add_argument("-c", "--cap", action="append", default=[], help="add a capability")
    e.add_argument("--no-new-privs", action="store_true")
    e.add_argument("--preserve-fds", type=int, default=0)
    e.add_argument("id")
    e.add_argument("command", nargs=argparse.REMAINDER)
    u = verbs["update"]
    u.add_argument("-r", "--resources", help="an OCI linux.resources JSON file ('-' for stdin)")
    u.add_argument("-m", "--memory", type=int, help="memory limit in bytes")
    u.add_argument("--memory-swap", type=int, help="memory+swap limit in bytes")
    u.add_argument("--memory-reservation", type=int)
    u.add_argument("--cpu-quota", type=int)
    u.add_argument("--cpu-period", type=int)
    u.add_argument("--cpu-share", "--cpu-shares", dest="cpu_share", type=int)
    u.add_argument("--cpuset-cpus")
    u.add_argument("--cpuset-mems")
    u.add_argument("--pids-limit", type=int)
    u.add_argument("id")
    ev = verbs["events"]
    ev.add_argument("--stats", action="store_true", help="print one stats event and exit")
    ev.add_argument("--interval", default="5s", help="how often to print stats (e.g. 5s, 500ms)")
    ev.add_argument("id")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    log = Log(args.log, args.log_format, args.debug)
    try:
        if args.systemd_cgroup:
            raise LabkitError("--systemd-cgroup is not supported: labkit manages cgroups through cgroupfs",
                              "leave it out (podman: --cgroup-manager cgroupfs)")
        log.debug(f"{args.verb} {getattr(args, 'id', '')}".strip())
        return COMMANDS[args.verb](args)
    except LabkitError as err:
        log.write("error", str(err.what))
        print(f"labkit-runc: {err}", file=sys.stderr)
        return 1
    except OSError as err:  # e.g. an unwritable --pid-file: the kernel's words, no traceback
        log.write("error", str(err))
        print(f"labkit-runc: {err}", file=sys.stderr)
        return 1


def _write_pid_file(path: str | None, pid: int) -> None:
    """As runc: written atomically, no newline."""
    if path:
        tmp = os.path.join(os.path.dirname(os.path.abspath(path)), f".{os.path.basename(path)}.tmp")
        with open(tmp, "w") as f:
            f.write(str(pid))
        os.replace(tmp, path)


def _create_options(args: argparse.Namespace) -> runtime.init.CreateOptions:
    from .runtime import init

    return init.CreateOptions(console_socket=args.console_socket, no_pivot=args.no_pivot,
                              no_new_keyring=args.no_new_keyring, preserve_fds=args.preserve_fds)


def cmd_spec(args: argparse.Namespace) -> int:
    if args.rootless:
        raise LabkitError("--rootless is not supported: labkit-runc runs as root", "leave it out")
    path = os.path.join(args.bundle, "config.json")
    if os.path.exists(path):
        raise LabkitError(f"{path} already exists", "remove it first")
    runtime.default_spec().save(args.bundle)
    return 0


def cmd_create(args: argparse.Namespace) -> int:
    from .runtime import init

    pid = init.create_container(args.id, args.bundle, args.root, _create_options(args))
    _write_pid_file(args.pid_file, pid)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from .runtime import init

    if args.detach:
        cmd_create(args)
        runtime.start(args.id, args.root)
        return 0
    try:
        return init.run_attached(args.id, args.bundle, args.root, _create_options(args), keep=args.keep)
    except init.ExecError as err:  # runc run reports it and exits 1 as well; the message says which
        raise LabkitError(f"runc run failed: unable to start container process: {err.what}", err.hint) from None


def cmd_start(args: argparse.Namespace) -> int:
    runtime.start(args.id, args.root)
    return 0


def cmd_state(args: argparse.Namespace) -> int:
    print(json.dumps(runtime.state(args.id, args.root).oci(), indent=2))
    return 0


def cmd_kill(args: argparse.Namespace) -> int:
    runtime.kill(args.id, args.signal, args.root, all=args.all)
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    from .hooks import HookError

    try:
        runtime.delete(args.id, force=args.force, root=args.root)
    except HookError as err:
        if not err.warning:
            raise
        print(f"labkit-runc: warning: {err}", file=sys.stderr)  # runc logs it; the container is deleted
    except LabkitError as err:
        if args.force and "does not exist" in err.what:  # runc delete --force of a missing id succeeds
            return 0
        raise
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    states = runtime.list_containers(args.root)
    if args.quiet:
        print("\n".join(s.id for s in states))
    elif args.format == "json":
        print(json.dumps([{**s.oci(), "pid": s.pid if s.status != "stopped" else 0, "created": s.created}
                          for s in states]))
    else:
        print(f"{'ID':<20} {'PID':<8} {'STATUS':<10} {'BUNDLE':<40} CREATED")
        for s in states:
            print(f"{s.id:<20} {s.pid if s.status != 'stopped' else 0:<8} {s.status:<10} {s.bundle:<40} {s.created}")
    return 0


def cmd_pause(args: argparse.Namespace) -> int:
    runtime.pause(args.id, args.root)
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    runtime.resume(args.id, args.root)
    return 0


def cmd_ps(args: argparse.Namespace) -> int:
    """runc ps: the cgroup's pids as JSON, or ps(1)'s table cut to the container's processes."""
    pids = runtime.cgroup(args.id, args.root).pids()
    if args.format == "json":
        print(json.dumps(pids))
        return 0
    out = subprocess.run(["ps", *(args.ps_args or ["-ef"])], capture_output=True, text=True)
    if out.returncode != 0:
        raise LabkitError(f"ps {' '.join(args.ps_args)} failed: {out.stderr.strip()}", "check the ps options")
    lines = out.stdout.splitlines()
    header = lines[0].split()
    if "PID" not in header:
        raise LabkitError("ps printed no PID column", "pass ps options that include the PID column (e.g. -ef)")
    column = header.index("PID")
    print(lines[0])
    for line in lines[1:]:
        fields = line.split()
        if len(fields) > column and fields[column].isdigit() and int(fields[column]) in pids:
            print(line)
    return 0


def cmd_exec(args: argparse.Namespace) -> int:
    from .runtime import init, setns

    process = setns.load_process(_exec_process(args))
    if process.terminal and not args.console_socket:
        raise LabkitError("exec -t needs --console-socket", "pass a unix socket that receives the pty master")
    if not args.detach:
        from . import sys as lsys

        lsys.set_child_subreaper()  # the new process comes back to us when its parent exits
    pid = setns.exec_in(args.id, process, args.root, args.console_socket, args.preserve_fds, reaper=not args.detach)
    _write_pid_file(args.pid_file, pid)
    if args.detach:
        return 0
    init.forward_signals(pid)
    return init.reap(pid)


def _exec_process(args: argparse.Namespace) -> dict[str, Any]:
    """The process to exec: process.json as given, else the container's own process with
    the command line's changes (runc's newProcess)."""
    if args.process:
        with open(args.process) as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as err:
                raise LabkitError(f"{args.process} is not valid JSON: {err}", "fix the process file") from None
        return data
    if not args.command:
        raise LabkitError("exec needs a command or --process", "e.g. labkit-runc exec ID sh -c 'echo hi'")
    base = runtime.Spec.load(runtime.state(args.id, args.root).bundle).process
    data = base.to_dict() if base else {}
    data["args"] = list(args.command)
    data["terminal"] = bool(args.tty)
    data["env"] = list(data.get("env") or []) + list(args.env)
    if args.cwd:
        data["cwd"] = args.cwd
    if args.user:
        uid, _, gid = args.user.partition(":")
        if not uid.isdigit() or (gid and not gid.isdigit()):
            raise LabkitError(f"--user {args.user!r} must be UID[:GID] numbers", "e.g. -u 1000:1000")
        data["user"] = {"uid": int(uid), "gid": int(gid or 0)}
    if args.additional_gids:
        data.setdefault("user", {})["additionalGids"] = args.additional_gids
    if args.no_new_privs:
        data["noNewPrivileges"] = True
    if args.cap:
        from . import capabilities

        caps = data.setdefault("capabilities", {})
        for key in ("bounding", "effective", "permitted", "ambient"):
            caps[key] = list(dict.fromkeys([*(caps.get(key) or []), *map(capabilities.canonical, args.cap)]))
    return data


def cmd_update(args: argparse.Namespace) -> int:
    resources: dict[str, Any] = {}
    if args.resources:
        text = sys.stdin.read() if args.resources == "-" else open(args.resources).read()
        try:
            resources = json.loads(text)
        except json.JSONDecodeError as err:
            raise LabkitError(f"--resources is not valid JSON: {err}", "pass an OCI linux.resources object") from None
    memory = {k: v for k, v in (("limit", args.memory), ("swap", args.memory_swap),
                                ("reservation", args.memory_reservation)) if v is not None}
    cpu = {k: v for k, v in (("quota", args.cpu_quota), ("period", args.cpu_period), ("shares", args.cpu_share),
                             ("cpus", args.cpuset_cpus), ("mems", args.cpuset_mems)) if v is not None}
    if memory:
        resources.setdefault("memory", {}).update(memory)
    if cpu:
        resources.setdefault("cpu", {}).update(cpu)
    if args.pids_limit is not None:
        resources["pids"] = {"limit": args.pids_limit}
    runtime.cgroup(args.id, args.root).apply(resources)
    return 0


def cmd_events(args: argparse.Namespace) -> int:
    """runc events: {"type": "stats"|"oom", "id", "data"} lines, every --interval until it stops."""
    interval = _duration(args.interval)
    group = runtime.cgroup(args.id, args.root)
    ooms = group.oom_kills()
    while True:
        print(json.dumps({"type": "stats", "id": args.id, "data": group.stats()}), flush=True)
        if args.stats:
            return 0
        time.sleep(interval)
        if runtime.state(args.id, args.root).status == "stopped":
            return 0
        now = group.oom_kills()
        if now > ooms:
            print(json.dumps({"type": "oom", "id": args.id}), flush=True)
            ooms = now


def _duration(text: str) -> float:
    for suffix, scale in (("ms", 0.001), ("s", 1.0), ("m", 60.0)):
        if text.endswith(suffix) and text[:-len(suffix)].replace(".", "", 1).isdigit():
            return float(text[:-len(suffix)]) * scale
    raise LabkitError(f"--interval {text!r} is not a duration", "e.g. 5s, 500ms or 1m")


COMMANDS = {name: globals()[f"cmd_{name}"] for name in VERBS}
