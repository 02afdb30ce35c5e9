"""`labkit run/create/start/stop/ps/logs/exec/…`: Docker's container verbs over labkit.engine.

Docker's grammar: options come before the image, and everything after the
image is the command (`labkit run busybox sh -c 'echo hi'`). Each verb parses
its flags into an engine call and prints what `docker` prints; nothing here
decides how a container is made (that is labkit.engine).

Exit codes as `docker run`'s: the container's own, or 125 when the engine
refused, 126 when the command cannot be executed, 127 when it is not found.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import sys
import threading
import time
from typing import Any, Iterator

from .engine import inspect as insp
from .engine import logs as lg
from .engine import mounts as mnt
from .engine import networking
from .engine import restart
from .engine.errors import EngineError, NotModified
from .engine.records import ContainerConfig, Resources
from .engine.timefmt import parse_time_arg
from .errors import LabkitError

ENGINE_ERROR = 125  # docker run: the daemon refused (bad flag, no image, name taken, …)


def _engine():
    from .engine.containers import Engine

    return Engine()


# -- flags shared by run and create ---------------------------------------------------------
def add_create_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--help", action="help", help="show this help and exit")  # -h is --hostname, as in docker
    p.add_argument("--name", help="a name for the container (default: a random adjective_surname)")
    p.add_argument("-e", "--env", action="append", default=[], metavar="KEY=VALUE", help="set an environment variable")
    p.add_argument("-w", "--workdir", default="", help="working directory inside the container")
    p.add_argument("-u", "--user", default="", help="user[:group] (name or number) to run as")
    p.add_argument("--entrypoint", help="replace the image's ENTRYPOINT ('' clears it)")
    p.add_argument("-h", "--hostname", default="", help="container host name (default: its short id)")
    p.add_argument("-l", "--label", action="append", default=[], metavar="KEY=VALUE", help="set a label")
    p.add_argument("--restart", default="no", help="no | on-failure[:N] | always | unless-stopped")
    p.add_argument("--rm", action="store_true", help="remove the container when it exits")
    p.add_argument("-v", "--volume", action="append", default=[], metavar="SRC:DST[:OPTS]",
                   help="bind mount (/host:/ctr), named volume (name:/ctr) or anonymous volume (/ctr)")
    p.add_argument("--mount", action="append", default=[], metavar="type=…,source=…,target=…",
                   help="a bind, volume or tmpfs mount, spelled out")
    p.add_argument("--tmpfs", action="append", default=[], metavar="/PATH[:OPTS]", help="mount a tmpfs")
    p.add_argument("--read-only", action="store_true", help="mount the root filesystem read-only")
    p.add_argument("-m", "--memory", help="memory limit (e.g. 64m, 1g)")
    p.add_argument("--memory-swap", help="memory + swap limit (-1: unlimited swap)")
    p.add_argument("--cpus", help="number of CPUs (e.g. 0.5)")
    p.add_argument("--cpu-shares", type=int, help="relative CPU weight (default 1024)")
    p.add_argument("--pids-limit", type=int, help="at most this many processes (-1: unlimited)")
    p.add_argument("--init", action="store_true", help="run an init (tini) as PID 1: signals, zombies")
    p.add_argument("--stop-signal", default="", help="signal that stops the container (default: the image's "
                                                          "STOPSIGNAL, else SIGTERM)")
    p.add_argument("--stop-timeout", type=int, help="seconds to wait after the stop signal before SIGKILL")
    p.add_argument("--cap-add", action="append", default=[], metavar="CAP", help="add a capability")
    p.add_argument("--cap-drop", action="append", default=[], metavar="CAP", help="drop a capability")
    p.add_argument("--privileged", action="store_true", help="every capability and device")
    p.add_argument("--log-opt", action="append", default=[], metavar="KEY=VALUE",
                   help="json-file log options: max-size, max-file")
    p.add_argument("-i", "--interactive", action="store_true", help="keep stdin open")
    p.add_argument("-t", "--tty", action="store_true", help="allocate a pseudo-terminal")
    p.add_argument("--network", "--net", default="bridge", metavar="NETWORK",
                   help="bridge (default), host, none, container:NAME, or a network's name")
    p.add_argument("--ip", default="", help="the container's IPv4 address on a user network")
    p.add_argument("--network-alias", action="append", default=[], metavar="ALIAS",
                   help="another name the container has on a user network's DNS")
    p.add_argument("-p", "--publish", action="append", default=[], metavar="[IP:][HOSTPORT:]PORT[/PROTO]",
                   help="publish a container port on the host (e.g. 127.0.0.1:8080:80)")
    p.add_argument("-P", "--publish-all", action="store_true", help="publish every EXPOSEd port on a free host port")
    p.add_argument("--dns", action="append", default=[], metavar="IP", help="upstream DNS server")
    p.add_argument("image", help="the image (busybox works offline)")
    p.add_argument("command", nargs=argparse.REMAINDER, help="command and arguments (default: the image's)")


def config_from(args: argparse.Namespace) -> ContainerConfig:
    """The record's config from `run`/`create` flags (parsing only; the engine checks the rest)."""
    mounts = [mnt.parse_volume(v) for v in args.volume] + [mnt.parse_mount(m) for m in args.mount] \
        + [mnt.parse_tmpfs(t) for t in args.tmpfs]
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    return ContainerConfig(
        image=args.image, command=tuple(command),
        entrypoint=None if args.entrypoint is None else tuple(args.entrypoint.split()) if args.entrypoint else (),
        env=tuple(_env(e) for e in args.env), working_dir=args.workdir, user=args.user, hostname=args.hostname,
        labels=dict(_pair(label, "label") for label in args.label), mounts=tuple(mounts),
        restart_policy=restart.parse_restart_policy(args.restart), auto_remove=args.rm,
        stop_signal=args.stop_signal, stop_timeout=args.stop_timeout, init=args.init, tty=args.tty,
        open_stdin=args.interactive, resources=_resources(args),
        log_opts=dict(_pair(o, "log-opt") for o in args.log_opt),
        cap_add=tuple(args.cap_add), cap_drop=tuple(args.cap_drop), privileged=args.privileged,
        read_only=args.read_only, network_mode=args.network, ip=args.ip, aliases=tuple(args.network_alias),
        ports=tuple(p for value in args.publish for p in networking.parse_publish(value)),
        publish_all=args.publish_all, dns=tuple(args.dns))


def _env(item: str) -> str:
    """`-e KEY` alone takes KEY from this environment, as docker does."""
    if "=" in item:
        return item
    return f"{item}={os.environ[item]}" if item in os.environ else item


def _pair(item: str, flag: str) -> tuple[str, str]:
    key, _, value = item.partition("=")
    if not key:
        raise LabkitError(f"invalid --{flag} {item!r}", f"use --{flag} KEY=VALUE")
    return key, value


_BINARY_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def ram_bytes(text: str) -> int:
    """docker's RAMInBytes: 64m = 64 MiB; -1 stays -1 (unlimited swap)."""
    t = text.strip().lower()
    if t == "-1":
        return -1
    num = t.rstrip("bkmgt")
    unit = t[len(num):].removesuffix("b") if len(t) > len(num) else ""
    try:
        return int(float(num) * _BINARY_UNITS[unit])
    except (ValueError, KeyError):
        raise LabkitError(f"invalid size: {text!r}", "use e.g. 64m, 512k or 1g") from None


def _resources(args: argparse.Namespace) -> Resources:
    nano = None
    if args.cpus:
        try:
            nano = int(round(float(args.cpus) * 1e9))
        except ValueError:
            raise LabkitError(f"invalid --cpus {args.cpus!r}", "give a number, e.g. 0.5") from None
    return Resources(memory=ram_bytes(args.memory) if args.memory else None,
                     memory_swap=ram_bytes(args.memory_swap) if args.memory_swap else None,
                     nano_cpus=nano, cpu_shares=args.cpu_shares, pids_limit=args.pids_limit)


# -- run, create, start, attach ---------------------------------------------------------------
def cmd_create(args: argparse.Namespace) -> int:
    try:
        rec = _engine().create(config_from(args), args.name)
    except LabkitError as err:  # docker create: 125 when the engine refuses
        print(f"labkit: {err}", file=sys.stderr)
        return ENGINE_ERROR
    print(rec.id)
    return 0


def run_image(args: argparse.Namespace) -> int:
    """`docker run`'s exit codes: the container's, or 125/126/127 with the engine's error."""
    from .runtime.init import ExecError

    try:
        return _run(args)
    except ExecError as err:  # 127 not found, 126 not executable
        print(f"labkit: {err}", file=sys.stderr)
        return err.exit_code
    except LabkitError as err:
        print(f"labkit: {err}", file=sys.stderr)
        return ENGINE_ERROR


def _run(args: argparse.Namespace) -> int:
    """create + start; attached (the default) it streams the output and returns the exit code."""
    engine = _engine()
    rec = engine.create(config_from(args), args.name)
    if args.detach:
        engine.start(rec.id)
        print(rec.id)
        return 0
    engine.start(rec.id, hold=True)
    code = attach_stream(engine, rec.id, stdin=args.interactive, proxy_signals=not args.tty, tty=args.tty)
    if code is None:  # detached with ctrl-p ctrl-q: it runs on
        return 0
    if args.rm:
        engine.wait_removed(rec.id)
    return code


def cmd_start(args: argparse.Namespace) -> int:
    engine = _engine()
    code = 0
    for ref in args.containers:
        if args.attach:
            engine.start(ref, hold=True)
            code = attach_stream(engine, ref, stdin=args.interactive, proxy_signals=True)
        else:
            engine.start(ref)
            print(ref)
    return code


def cmd_attach(args: argparse.Namespace) -> int:
    engine = _engine()
    tty = engine.get(args.container).config.tty
    code = attach_stream(engine, args.container, stdin=not args.no_stdin, proxy_signals=args.sig_proxy and not tty,
                         tty=tty)
    return 0 if code is None else code


DETACH_KEYS = b"\x10\x11"  # ctrl-p ctrl-q, Docker's default detach sequence


def attach_stream(engine: Any, ref: str, stdin: bool, proxy_signals: bool, tty: bool = False) -> int | None:
    """Copy the monitor's multiplexed stream to our stdout/stderr (and our stdin to it) until
    the run ends; the container's exit code, or None if the user detached (ctrl-p ctrl-q).
    With a terminal our own is put in raw mode, so keys (ctrl-c too) go to the container."""
    from .engine.monitor import EXIT, FRAME

    sock = engine.attach(ref)
    if proxy_signals:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2):
            signal.signal(sig, lambda n, _f: _proxy(engine, ref, n))
    detached = threading.Event()
    with _raw_terminal(engine, ref, tty and os.isatty(0)):
        if stdin:
            threading.Thread(target=_pump_stdin, args=(sock, tty, detached), daemon=True).start()
        reader = sock.makefile("rb")
        outs = {1: sys.stdout.buffer, 2: sys.stderr.buffer}
        while True:
            header = reader.read(FRAME.size)
            if len(header) < FRAME.size:  # detached, or the monitor went away without an exit frame
                return None if detached.is_set() else engine.wait(ref)
            stream, size = FRAME.unpack(header)
            data = reader.read(size)
            if stream == EXIT:
                sock.close()
                return int(json.loads(data)["exit_code"])
            outs[stream].write(data)
            outs[stream].flush()


@contextlib.contextmanager
def _raw_terminal(engine: Any, ref: str, active: bool) -> Iterator[None]:
    """Our terminal in raw mode, its size passed on now and on every SIGWINCH."""
    if not active:
        yield
        return
    import termios
    import tty as ttymod

    saved = termios.tcgetattr(0)

    def resize(*_: Any) -> None:
        size = os.get_terminal_size(0)
        engine.resize(ref, size.lines, size.columns)

    resize()
    previous = signal.signal(signal.SIGWINCH, resize)
    ttymod.setraw(0)
    try:
        yield
    finally:
        termios.tcsetattr(0, termios.TCSADRAIN, saved)
        signal.signal(signal.SIGWINCH, previous)


def _proxy(engine: Any, ref: str, signum: int) -> None:
    try:
        engine.kill(ref, signum)
    except LabkitError:
        pass


def _pump_stdin(sock: socket.socket, tty: bool, detached: threading.Event) -> None:
    """Our stdin to the container; with a terminal, ctrl-p ctrl-q detaches instead."""
    previous = b""
    try:
        while True:
            data = os.read(0, 65536)
            if not data:
                break
            if tty and DETACH_KEYS in previous[-1:] + data:
                detached.set()
                sock.shutdown(socket.SHUT_RDWR)
                return
            previous = data
            sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass


# -- stop, kill, restart, pause, rm, rename, wait -----------------------------------------------
def _each(refs: list[str], action) -> int:
    """Docker's multi-container verbs: act on each, report each failure, exit 1 if any failed."""
    failed = False
    for ref in refs:
        try:
            action(ref)
            print(ref)
        except NotModified:
            print(ref)
        except LabkitError as err:
            print(f"Error response from daemon: {err.what}", file=sys.stderr)
            failed = True
    return 1 if failed else 0


def cmd_stop(args: argparse.Namespace) -> int:
    engine = _engine()
    return _each(args.containers, lambda r: engine.stop(r, args.time, args.signal))


def cmd_kill(args: argparse.Namespace) -> int:
    engine = _engine()
    return _each(args.containers, lambda r: engine.kill(r, args.signal))


def cmd_restart(args: argparse.Namespace) -> int:
    engine = _engine()
    return _each(args.containers, lambda r: engine.restart(r, args.time))


def cmd_pause(args: argparse.Namespace) -> int:
    engine = _engine()
    return _each(args.containers, engine.pause)


def cmd_unpause(args: argparse.Namespace) -> int:
    engine = _engine()
    return _each(args.containers, engine.unpause)


def cmd_rm(args: argparse.Namespace) -> int:
    engine = _engine()
    return _each(args.containers, lambda r: engine.remove(r, force=args.force, remove_volumes=args.volumes))


def cmd_rename(args: argparse.Namespace) -> int:
    _engine().rename(args.container, args.new_name)
    return 0


def cmd_wait(args: argparse.Namespace) -> int:
    engine = _engine()
    for ref in args.containers:
        print(engine.wait(ref), flush=True)
    return 0


# -- ps, inspect, logs, top, stats ----------------------------------------------------------------
def cmd_ps(args: argparse.Namespace) -> int:
    engine = _engine()
    records = [r for r in engine.list(all=args.all or bool(args.filter)) if insp.matches(r, args.filter)]
    if args.quiet:
        for r in records:
            print(r.id if args.no_trunc else r.id[:12])
        return 0
    rows = [insp.ps_row(r, _args_of(engine, r)) for r in records]
    if args.no_trunc:
        for row, r in zip(rows, records):
            row["ID"] = r.id
    if args.format == "json":
        for row in rows:
            print(json.dumps(row))
    elif args.format:
        for row in rows:
            print(insp.render(args.format, row))
    else:
        print(insp.table(rows))
    return 0


def _args_of(engine: Any, rec: Any) -> list[str]:
    from .runtime.spec import Spec

    try:
        process = Spec.load(engine.store.path(rec.id, "bundle")).process
        return list(process.args) if process else []
    except LabkitError:
        return []


def cmd_inspect(args: argparse.Namespace) -> int:
    engine = _engine()
    found, failed = [], False
    for ref in args.objects:
        try:
            rec = engine.get(ref)
            found.append(insp.container_json(rec, engine.store.path(rec.id, "bundle"), engine.log_path(rec),
                                             engine.volumes.path, engine.networks.of_container(rec.id)))
        except EngineError:
            try:
                found.append(engine.volumes.inspect(ref))
            except EngineError:
                try:
                    found.append(network_json(engine, engine.networks.get(ref)))
                except EngineError:
                    print(f"Error: No such object: {ref}", file=sys.stderr)
                    failed = True
    if args.format == "json" or not args.format:
        if found or not failed:
            print(json.dumps(found, indent=4))
    else:
        for obj in found:
            print(insp.render(args.format, obj))
    return 1 if failed else 0


def cmd_logs(args: argparse.Namespace) -> int:
    engine = _engine()
    since = parse_time_arg(args.since) if args.since else None
    until = parse_time_arg(args.until) if args.until else None
    outs = {"stdout": sys.stdout, "stderr": sys.stderr}
    try:
        for entry in engine.logs(args.container, follow=args.follow, tail=lg.parse_tail(args.tail),
                                 since=since, until=until):
            out = outs[entry.stream]
            out.write(lg.format_entry(entry, args.timestamps))
            out.flush()
    except KeyboardInterrupt:
        return 130
    return 0


def cmd_top(args: argparse.Namespace) -> int:
    rows = _engine().top(args.container)
    print(insp.table(rows, (("PID", "PID"), ("CMD", "CMD"))))
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    """`docker stats`: CPU % is the growth of CPU time over a second, so each table takes two
    samples; without --no-stream it redraws every second until interrupted."""
    engine = _engine()
    records = [engine.get(r) for r in args.containers] if args.containers else engine.list()
    previous = {r.id: engine.stats(r.id) for r in records}
    t0 = time.monotonic()
    try:
        while True:
            time.sleep(1.0)
            now = time.monotonic()
            current = {r.id: engine.stats(r.id) for r in records}
            table = _stats_table(records, previous, current, now - t0)
            if args.no_stream:
                print(table)
                return 0
            print(("\x1b[2J\x1b[H" if sys.stdout.isatty() else "") + table, flush=True)
            previous, t0 = current, now
    except KeyboardInterrupt:
        return 0
    except LabkitError as err:  # a container stopped meanwhile
        print(f"labkit: {err}", file=sys.stderr)
        return 1


def _stats_table(records: list, first: dict, second: dict, elapsed: float) -> str:
    rows = []
    for r in records:
        s = second[r.id]
        cpu = (s["cpu_usage_usec"] - first[r.id]["cpu_usage_usec"]) / 1e6 / elapsed * 100
        limit = s["memory_limit"] or 0
        rows.append({"ID": r.id[:12], "Name": r.name, "CPU": f"{cpu:.2f}%",
                     "Mem": f"{_mib(s['memory_usage'])} / {_mib(limit) if limit else 'unlimited'}",
                     "MemPerc": f"{s['memory_usage'] / limit * 100:.2f}%" if limit else "--",
                     "PIDs": s["pids"]})
    return insp.table(rows, (("CONTAINER ID", "ID"), ("NAME", "Name"), ("CPU %", "CPU"),
                             ("MEM USAGE / LIMIT", "Mem"), ("MEM %", "MemPerc"), ("PIDS", "PIDs")))


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f}MiB"


# -- exec -----------------------------------------------------------------------------------------
def cmd_exec(args: argparse.Namespace) -> int:
    if not args.interactive:  # docker exec without -i gives the process no stdin
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
    return _engine().exec(args.container, args.command, env=[_env(e) for e in args.env], user=args.user,
                          workdir=args.workdir, detach=args.detach, tty=args.tty)


# -- the engine ------------------------------------------------------------------------------------
def cmd_engine(args: argparse.Namespace) -> int:
    for name in _engine().restore():
        print(f"started {name} (restart policy)")
    return 0


# -- volumes --------------------------------------------------------------------------------------
def cmd_volume(args: argparse.Namespace) -> int:
    engine = _engine()
    if args.volume_command == "create":
        vol = engine.volumes.create(args.name, labels=dict(_pair(label, "label") for label in args.label))
        print(vol.name)
    elif args.volume_command == "ls":
        vols = engine.volumes.list()
        if args.quiet:
            for v in vols:
                print(v.name)
        else:
            print(insp.table([{"Driver": "local", "Name": v.name} for v in vols],
                             (("DRIVER", "Driver"), ("VOLUME NAME", "Name"))))
    elif args.volume_command == "inspect":
        print(json.dumps([engine.volumes.inspect(n) for n in args.names], indent=4))
    elif args.volume_command == "rm":
        return _each(args.names, lambda n: engine.remove_volume(n, force=args.force))
    elif args.volume_command == "prune":
        gone = engine.prune_volumes(all=args.all)
        print("Deleted Volumes:\n" + "".join(n + "\n" for n in gone) if gone else "", end="")
        print(f"Total reclaimed volumes: {len(gone)}")
    return 0


# -- networks -------------------------------------------------------------------------------------
def network_json(engine: Any, net: Any) -> dict[str, Any]:
    """`docker network inspect`'s object."""
    names = engine.store.names()
    return {
        "Name": net.name, "Id": net.id, "Created": insp.rfc3339_nano(net.created), "Scope": "local",
        "Driver": net.driver, "EnableIPv6": False,
        "IPAM": {"Driver": "default", "Options": {},
                 "Config": [{"Subnet": net.subnet, "Gateway": net.gateway}] if net.subnet else []},
        "Internal": net.internal, "Attachable": False, "Ingress": False,
        "Containers": {cid: {"Name": names.get(cid, ""), "EndpointID": ep.link, "MacAddress": ep.mac,
                             "IPv4Address": f"{ep.ip}/{net.prefix_len}", "IPv6Address": ""}
                       for cid, ep in net.endpoints.items()},
        "Options": {"com.docker.network.bridge.name": net.link} if net.link else {},
        "Labels": dict(net.labels),
    }


def cmd_network(args: argparse.Namespace) -> int:
    engine = _engine()
    verb = args.network_command
    if verb == "create":
        net = engine.create_network(args.name, subnet=args.subnet, gateway=args.gateway, internal=args.internal,
                                    labels=dict(_pair(label, "label") for label in args.label), driver=args.driver)
        print(net.id)
    elif verb == "ls":
        nets = engine.networks.list()
        if args.quiet:
            print("".join(n.id[:12] + "\n" for n in nets), end="")
        else:
            print(insp.table([{"Id": n.id[:12], "Name": n.name, "Driver": n.driver, "Scope": "local"} for n in nets],
                             (("NETWORK ID", "Id"), ("NAME", "Name"), ("DRIVER", "Driver"), ("SCOPE", "Scope"))))
    elif verb == "inspect":
        print(json.dumps([network_json(engine, engine.networks.get(n)) for n in args.names], indent=4))
    elif verb == "rm":
        return _each(args.names, engine.remove_network)
    elif verb == "prune":
        gone = engine.prune_networks()
        print("Deleted Networks:\n" + "".join(n + "\n" for n in gone) if gone else "", end="")
    elif verb == "connect":
        engine.connect(args.network, args.container, aliases=args.alias, ip=args.ip or None)
    elif verb == "disconnect":
        engine.disconnect(args.network, args.container, force=args.force)
    return 0


def cmd_port(args: argparse.Namespace) -> int:
    """`docker port`: where the container's ports are published."""
    rec = _engine().get(args.container)
    for p in rec.state.ports:
        key = f"{p['container_port']}/{p['proto']}"
        if args.port in (None, key, str(p["container_port"])):
            print((f"{key} -> " if args.port is None else "") + f"{p['host_ip'] or '0.0.0.0'}:{p['host_port']}")
    return 0


# -- the parsers ----------------------------------------------------------------------------------
def add_verbs(sub: Any) -> None:
    """Add the container and volume verbs to `labkit`'s subcommands."""
    run = sub.add_parser("run", add_help=False,
                         help="create and start a container from an image (or a rootfs dir/bundle)",
                         description="labkit run [OPTIONS] IMAGE [COMMAND] [ARG...]: everything after IMAGE "
                                     "is the command. IMAGE may also be a bundle or rootfs directory.")
    run.add_argument("-d", "--detach", action="store_true", help="run in the background, print its id")
    add_create_flags(run)
    run.set_defaults(func=run_image)
    create = sub.add_parser("create", add_help=False, help="create a container from an image, without starting it")
    add_create_flags(create)
    create.set_defaults(func=cmd_create)

    start = sub.add_parser("start", help="start created or stopped containers")
    start.add_argument("-a", "--attach", action="store_true", help="attach to its output, return its exit code")
    start.add_argument("-i", "--interactive", action="store_true", help="attach stdin too")
    start.add_argument("containers", nargs="+")
    start.set_defaults(func=cmd_start)
    attach = sub.add_parser("attach", help="attach to a running container's output (and stdin)")
    attach.add_argument("--no-stdin", action="store_true", help="do not forward stdin")
    attach.add_argument("--sig-proxy", action=argparse.BooleanOptionalAction, default=True,
                        help="forward the signals this command gets to the container")
    attach.add_argument("container")
    attach.set_defaults(func=cmd_attach)

    for name, func, helptext in (("stop", cmd_stop, "stop: the stop signal, then SIGKILL after a timeout"),
                                 ("restart", cmd_restart, "stop and start again")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("-t", "--time", type=int, help="seconds to wait before SIGKILL (default: its --stop-timeout, 10)")
        if name == "stop":
            p.add_argument("-s", "--signal", help="the signal to send (default: its --stop-signal)")
        p.add_argument("containers", nargs="+")
        p.set_defaults(func=func, signal=None)
    kill = sub.add_parser("kill", help="send a signal (default KILL) to containers")
    kill.add_argument("-s", "--signal", default="KILL")
    kill.add_argument("containers", nargs="+")
    kill.set_defaults(func=cmd_kill)
    for name, func in (("pause", cmd_pause), ("unpause", cmd_unpause)):
        p = sub.add_parser(name, help=f"{name} every process of containers (the cgroup freezer)")
        p.add_argument("containers", nargs="+")
        p.set_defaults(func=func)
    rm = sub.add_parser("rm", help="remove containers (their writable layer and logs)")
    rm.add_argument("-f", "--force", action="store_true", help="kill it first if it runs")
    rm.add_argument("-v", "--volumes", action="store_true", help="remove its anonymous volumes too")
    rm.add_argument("containers", nargs="+")
    rm.set_defaults(func=cmd_rm)
    rename = sub.add_parser("rename", help="rename a container")
    rename.add_argument("container")
    rename.add_argument("new_name")
    rename.set_defaults(func=cmd_rename)
    wait = sub.add_parser("wait", help="block until containers stop; print their exit codes")
    wait.add_argument("containers", nargs="+")
    wait.set_defaults(func=cmd_wait)

    ps = sub.add_parser("ps", help="list containers")
    ps.add_argument("-a", "--all", action="store_true", help="stopped ones too")
    ps.add_argument("-q", "--quiet", action="store_true", help="ids only")
    ps.add_argument("-f", "--filter", action="append", default=[], metavar="KEY=VALUE",
                    help="status=, name=, id=, label=, exited=, ancestor=")
    ps.add_argument("--format", help="'json' or a template such as '{{.Names}}\\t{{.Status}}'")
    ps.add_argument("--no-trunc", action="store_true", help="full ids")
    ps.set_defaults(func=cmd_ps)
    insp_ = sub.add_parser("inspect", help="low-level information on containers and volumes, as JSON")
    insp_.add_argument("-f", "--format", help="a template such as '{{.State.Status}}', or 'json'")
    insp_.add_argument("objects", nargs="+")
    insp_.set_defaults(func=cmd_inspect)
    logs = sub.add_parser("logs", help="a container's output (its json-file log)")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new output until it stops")
    logs.add_argument("-n", "--tail", default="all", help="only the last N lines")
    logs.add_argument("--since", help="from this time (RFC 3339, or a duration such as 10m)")
    logs.add_argument("--until", help="before this time")
    logs.add_argument("-t", "--timestamps", action="store_true")
    logs.add_argument("container")
    logs.set_defaults(func=cmd_logs)
    top = sub.add_parser("top", help="the processes of a container")
    top.add_argument("container")
    top.set_defaults(func=cmd_top)
    stats = sub.add_parser("stats", help="CPU, memory and pids of containers")
    stats.add_argument("--no-stream", action="store_true", help="one sample, then exit")
    stats.add_argument("containers", nargs="*")
    stats.set_defaults(func=cmd_stats)
    exe = sub.add_parser("exec", help="run a command in a running container")
    exe.add_argument("-d", "--detach", action="store_true")
    exe.add_argument("-i", "--interactive", action="store_true", help="keep stdin open")
    exe.add_argument("-t", "--tty", action="store_true")
    exe.add_argument("-e", "--env", action="append", default=[])
    exe.add_argument("-u", "--user", default="")
    exe.add_argument("-w", "--workdir", default="")
    exe.add_argument("container")
    exe.add_argument("command", nargs=argparse.REMAINDER)
    exe.set_defaults(func=cmd_exec)

    eng = sub.add_parser("engine", help="the engine itself")
    esub = eng.add_subparsers(dest="engine_command", required=True)
    esub.add_parser("restore", help="what dockerd does when it starts: mark dead containers exited, start "
                                    "--restart always (and unless-stopped) ones again")
    eng.set_defaults(func=cmd_engine)

    vol = sub.add_parser("volume", help="manage volumes")
    vsub = vol.add_subparsers(dest="volume_command", required=True)
    vc = vsub.add_parser("create", help="create a named volume")
    vc.add_argument("name", nargs="?")
    vc.add_argument("--label", action="append", default=[])
    vl = vsub.add_parser("ls", help="list volumes")
    vl.add_argument("-q", "--quiet", action="store_true")
    vi = vsub.add_parser("inspect", help="a volume's details")
    vi.add_argument("names", nargs="+")
    vr = vsub.add_parser("rm", help="remove volumes (not while a container uses them)")
    vr.add_argument("-f", "--force", action="store_true")
    vr.add_argument("names", nargs="+")
    vp = vsub.add_parser("prune", help="remove anonymous volumes no container uses")
    vp.add_argument("-a", "--all", action="store_true", help="named ones too")
    vol.set_defaults(func=cmd_volume)

    net = sub.add_parser("network", help="manage networks")
    nsub = net.add_subparsers(dest="network_command", required=True)
    nc = nsub.add_parser("create", help="create a bridge network (isolated; containers resolve each other by name)")
    nc.add_argument("name")
    nc.add_argument("--subnet", help="its IPv4 subnet in CIDR notation (default: a free /24 of 10.210.0.0/16)")
    nc.add_argument("--gateway", help="the bridge's address (default: the subnet's first)")
    nc.add_argument("--internal", action="store_true", help="no way out: no NAT, no route beyond the bridge")
    nc.add_argument("-d", "--driver", default="bridge", help="bridge (the only driver labkit has)")
    nc.add_argument("--label", action="append", default=[])
    nl = nsub.add_parser("ls", help="list networks")
    nl.add_argument("-q", "--quiet", action="store_true")
    ni = nsub.add_parser("inspect", help="a network's details and its containers")
    ni.add_argument("names", nargs="+")
    nr = nsub.add_parser("rm", help="remove networks (not while containers use them)")
    nr.add_argument("names", nargs="+")
    nsub.add_parser("prune", help="remove every user network no container uses")
    ncon = nsub.add_parser("connect", help="connect a container to a network")
    ncon.add_argument("--ip", default="")
    ncon.add_argument("--alias", action="append", default=[])
    ncon.add_argument("network")
    ncon.add_argument("container")
    ndis = nsub.add_parser("disconnect", help="disconnect a container from a network")
    ndis.add_argument("-f", "--force", action="store_true")
    ndis.add_argument("network")
    ndis.add_argument("container")
    net.set_defaults(func=cmd_network)
    port = sub.add_parser("port", help="the published ports of a container")
    port.add_argument("container")
    port.add_argument("port", nargs="?", help="PORT[/PROTO]")
    port.set_defaults(func=cmd_port)
