"""The engine's per-container monitor: conmon's role, plus Docker's restart manager.

    python -S -m labkit.engine.monitor ID READY_FD [--hold]

`labkit start` spawns it in a session of its own; it outlives the CLI. It
  - is a child subreaper and creates the container through the runtime
    (labkit.runtime.init.create_container, as `labkit-runc create` would), so
    the container's init is its child and its exit status comes here;
  - owns the container's stdio: stdout/stderr are pipes it reads and writes to
    the json-file log (<dir>/<id>-json.log) and to attached clients; stdin is
    a pipe from attached clients (-i) or /dev/null;
  - records each run in the engine's record (running, pid, started/finished
    times, exit code, OOMKilled), removes the runtime's state and cgroup after
    each run (`labkit-runc delete`), and applies the restart policy with
    Docker's backoff;
  - answers on <dir>/ctl.sock (a Unix socket); a client sends one JSON line:
      {"op": "wait", "started_at": NS}  -> one line {"exit_code": N} when the run
                                           that started at NS has ended
      {"op": "follow"}                  -> every json-file line as it is logged,
                                           until the monitor ends (`logs -f`)
      {"op": "attach"}                  -> the run's output as Docker's multiplexed
                                           stream (8-byte header: stream 1 or 2,
                                           0, 0, 0, big-endian length; then the
                                           bytes); a last frame of stream 3 holds
                                           {"exit_code": N}. Bytes the client sends
                                           after its line go to the container's
                                           stdin; its half-close closes stdin.
With --hold the container is created but not started until the first attach
client arrives (`labkit run` without -d: no output is missed).

Ready message on READY_FD, one JSON line: {"pid": P} once the first run has
started, or {"error", "hint"[, "exit_code"]} if it could not be created.
SIGTERM to the monitor wakes it: during a restart backoff it then re-reads the
record and gives up restarting if the user stopped the container.
"""
from __future__ import annotations

import fcntl
import json
import os
import select
import shutil
import signal
import socket
import struct
import sys
import tempfile
import termios
import time
from typing import Any

from .. import settings
from ..errors import LabkitError
from ..runtime import container as rt
from ..runtime import init
from ..runtime import store as rtstore
from . import faults, logs, records, restart
from .status import Status
from .timefmt import now_ns

CTL_SOCKET = "ctl.sock"
FRAME = struct.Struct(">BxxxI")  # Docker's stdcopy header: stream id, 3 zero bytes, length
STDOUT, STDERR, EXIT = 1, 2, 3
DRAIN_SECONDS = 2.0
HOLD_SECONDS = 30.0  # --hold: start anyway if the client that asked for it never attaches  # after the init exits, how long a grandchild may keep the pipes open


class Clients:
    """Connected ctl.sock clients, by what they asked for."""

    def __init__(self) -> None:
        self.pending: dict[socket.socket, bytes] = {}   # request line not complete yet
        self.waiters: list[tuple[socket.socket, int]] = []
        self.followers: list[socket.socket] = []
        self.attached: list[socket.socket] = []

    def send(self, group: list, data: bytes) -> None:
        for sock in list(group):
            try:
                sock.sendall(data)
            except OSError:  # the client went away: forget it
                group.remove(sock)
                sock.close()

    def close_all(self, group: list) -> None:
        for sock in group:
            sock.close()
        group.clear()


class Monitor:
    def __init__(self, cid: str, hold: bool) -> None:
        self.cid, self.hold = cid, hold
        self.store = records.Store()
        self.record = self.store.load(cid)
        self.dir = self.store.path(cid)
        self.runtime_root = settings.runtime_root()
        self.log = logs.JsonFileWriter(logs.log_path(self.dir, cid), logs.parse_log_opts(self.record.config.log_opts))
        self.clients = Clients()
        self.poll = select.poll()
        self.handlers: dict[int, Any] = {}
        self.stdin_w: int | None = None
        self.master: int | None = None  # the pty master, with -t
        self.console_listener: socket.socket | None = None
        self.started_at = 0
        self.last_exit = 0
        self.dns: Any = None  # the embedded DNS server while the container runs on a user network
        os.chdir(self.dir)  # ctl.sock by a short relative name (sun_path holds 108 bytes)
        if os.path.lexists(CTL_SOCKET):
            os.unlink(CTL_SOCKET)
        self.ctl = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.ctl.bind(CTL_SOCKET)
        self.ctl.listen(16)
        self.watch(self.ctl.fileno(), self.on_accept)
        self.wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, lambda *_: None)  # only to wake the poll (set_wakeup_fd)
        self.watch(self.wake_r, lambda fd, ev: os.read(fd, 512))

    # -- poll loop plumbing ------------------------------------------------------------
    def watch(self, fd: int, handler: Any, events: int = select.POLLIN) -> None:
        self.handlers[fd] = handler
        self.poll.register(fd, events)

    def unwatch(self, fd: int) -> None:
        self.handlers.pop(fd, None)
        self.poll.unregister(fd)

    def step(self, timeout: float | None) -> bool:
        """Handle what is ready; False if nothing was within `timeout` seconds."""
        ready = self.poll.poll(None if timeout is None else max(0, int(timeout * 1000)))
        for fd, ev in ready:
            handler = self.handlers.get(fd)
            if handler:
                handler(fd, ev)
        return bool(ready)

    # -- ctl.sock ----------------------------------------------------------------------
    def on_accept(self, fd: int, ev: int) -> None:
        sock, _ = self.ctl.accept()
        self.clients.pending[sock] = b""
        self.watch(sock.fileno(), lambda f, e: self.on_request(sock))

    def on_request(self, sock: socket.socket) -> None:
        try:
            chunk = sock.recv(65536)
        except OSError:
            chunk = b""
        if sock in self.clients.pending:
            buf = self.clients.pending[sock] + chunk
            if b"\n" not in buf and chunk:
                self.clients.pending[sock] = buf
                return
            del self.clients.pending[sock]
            line, _, rest = buf.partition(b"\n")
            self.dispatch(sock, line, rest)
            return
        if sock in self.clients.attached:  # stdin bytes from an attached client
            self.to_stdin(sock, chunk)
        elif not chunk:
            self.forget(sock)

    def dispatch(self, sock: socket.socket, line: bytes, rest: bytes) -> None:
        try:
            req = json.loads(line or b"{}")
        except ValueError:
            req = {}
        op = req.get("op")
        if op == "wait":
            if self.started_at and req.get("started_at") == self.started_at:
                self.clients.waiters.append((sock, self.started_at))
            else:  # that run is over already
                self.reply(sock, {"exit_code": self.last_exit})
        elif op == "follow":
            self.clients.followers.append(sock)
        elif op == "resize":
            self.resize(int(req.get("height", 0)), int(req.get("width", 0)))
            self.reply(sock, {"ok": True})
        elif op == "attach":
            self.clients.attached.append(sock)
            if rest or not self.record.config.open_stdin:
                self.to_stdin(sock, rest)
        else:
            self.reply(sock, {"error": f"unknown request {line[:80]!r}"})

    def reply(self, sock: socket.socket, obj: dict[str, Any]) -> None:
        self.unwatch(sock.fileno())
        try:
            sock.sendall(json.dumps(obj).encode() + b"\n")
        except OSError:
            pass
        sock.close()

    def forget(self, sock: socket.socket) -> None:
        for group in (self.clients.followers, self.clients.attached):
            if sock in group:
                group.remove(sock)
        self.clients.waiters = [(s, t) for s, t in self.clients.waiters if s is not sock]
        if sock.fileno() in self.handlers:
            self.unwatch(sock.fileno())
        sock.close()

    def to_stdin(self, sock: socket.socket, data: bytes) -> None:
        if not data and sock.fileno() in self.handlers:
            self.unwatch(sock.fileno())  # half-closed: keep it for the output, read no more
        if self.stdin_w is None:
            return
        if not data:
            if self.master is None:  # docker run -i: the client's EOF is the container's
                os.close(self.stdin_w)  # (with a terminal it is a detach: ctrl-d is a key there)
                self.stdin_w = None
            return
        try:
            os.write(self.stdin_w, data)
        except OSError:  # the container closed its stdin
            pass

    # -- one run of the container ------------------------------------------------------
    def create(self) -> tuple[int, list[int]]:
        """Create the container with our pipes as its stdio; its pid and the read ends.
        With a terminal (-t), its stdio is a pty whose master the runtime sends us
        through a console socket (as runc sends it to conmon): see `receive_console`."""
        self.join_network_namespace()
        if self.record.config.tty:
            return self.create_with_terminal()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        if self.record.config.open_stdin:
            in_r, self.stdin_w = os.pipe()
        else:
            in_r = os.open(os.devnull, os.O_RDONLY)
        for fd, target in ((in_r, 0), (out_w, 1), (err_w, 2)):
            os.dup2(fd, target)
        try:
            # No monitor_pid in the runtime's state: that names the runtime API's own monitor
            # (labkit.monitor), which `delete` would wait for; the engine's record has ours.
            opts = init.CreateOptions(reaper=True, die_with_parent=True)
            pid = init.create_container(self.cid, self.store.path(self.cid, "bundle"), self.runtime_root, opts)
        except BaseException:
            for fd in (out_r, err_r) + ((self.stdin_w,) if self.stdin_w is not None else ()):
                os.close(fd)
            self.stdin_w = None
            raise
        finally:
            _null_stdio()
            for fd in (in_r, out_w, err_w):
                os.close(fd)
        return pid, [out_r, err_r]

    def create_with_terminal(self) -> tuple[int, list[int]]:
        console_dir = tempfile.mkdtemp(prefix="labkit-console-")  # short: sun_path holds 108 bytes
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            path = os.path.join(console_dir, "console.sock")
            listener.bind(path)
            listener.listen(1)  # the init's connect and its SCM_RIGHTS message wait in the backlog
            opts = init.CreateOptions(reaper=True, die_with_parent=True, console_socket=path)
            pid = init.create_container(self.cid, self.store.path(self.cid, "bundle"), self.runtime_root, opts)
            self.console_listener = listener
            return pid, []
        except BaseException:
            listener.close()
            raise
        finally:
            shutil.rmtree(console_dir, ignore_errors=True)  # the bound socket keeps working unnamed

    def join_network_namespace(self) -> None:
        """--network container:ID: the bundle names that container's namespace as it is now."""
        from . import networking

        path = networking.netns_path(self.record, self.store)
        if path is not None:
            from ..runtime.spec import Spec

            bundle = self.store.path(self.cid, "bundle")
            spec = Spec.load(bundle)
            for ns in spec.linux.namespaces:
                if ns.type == "network":
                    ns.path = path
            spec.save(bundle)

    # -- networking, between create and start --------------------------------------------
    def wire(self, pid: int) -> None:
        """Ports chosen, veths into the created container, nft table, DNS server (networking)."""
        from . import networking

        mode = self.record.config.network_mode
        if mode == "host" or mode.startswith("container:"):
            return
        if self.record.config.ports:
            with networking.NetworkStore.host_lock():  # two starts never take the same free port
                ports = networking.choose_ports(self.record, self.store)
                with self.store.edit(self.cid) as rec:
                    rec.state.ports = ports
                    self.record = rec
        self.dns = networking.before_start(self.record, pid, os.path.dirname(self.store.root))
        if self.dns is not None:
            for fd in self.dns.fds():
                self.watch(fd, lambda fd, ev: self.dns.on_ready(fd))

    def unwire(self) -> None:
        """After a run: the DNS server closed, the ports unpublished."""
        from . import networking

        if self.dns is not None:
            for fd in self.dns.fds():
                self.unwatch(fd)
            self.dns.close()
            self.dns = None
        mode = self.record.config.network_mode
        if mode == "host" or mode.startswith("container:"):
            return
        with self.store.edit(self.cid) as rec:
            rec.state.ports = []
            self.record = rec
        networking.after_exit(self.record, os.path.dirname(self.store.root))

    def receive_console(self) -> list[int]:
        """The pty master the init sent (it did so before it exec'd, so it is queued by now)."""
        listener, self.console_listener = self.console_listener, None
        listener.settimeout(10)
        try:
            conn, _ = listener.accept()
            with conn:
                _, fds, _, _ = socket.recv_fds(conn, 64, 1)
        finally:
            listener.close()
        self.master = fds[0]
        if self.record.config.open_stdin:
            self.stdin_w = os.dup(self.master)
        return [self.master]

    def resize(self, height: int, width: int) -> None:
        if self.master is not None:
            fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, 0, 0))

    def run_once(self, pid: int, pipes: list[int]) -> int:
        """Pump the output until the init has exited and the pipes are closed; its exit code."""
        partial = {STDOUT: b"", STDERR: b""}
        streams = dict(zip(pipes, (STDOUT, STDERR)))
        code: list[int] = []

        def on_output(fd: int, ev: int) -> None:
            try:
                data = os.read(fd, 65536)
            except OSError:  # EIO: a pty master once every slave fd is closed
                data = b""
            stream = streams[fd]
            if not data:
                self.unwatch(fd)
                os.close(fd)
                del streams[fd]
                if partial[stream]:
                    self.emit(stream, [partial[stream]])
                if fd == self.master:
                    self.master = None
                return
            if self.clients.attached:
                self.clients.send(self.clients.attached, FRAME.pack(stream, len(data)) + data)
            lines = (partial[stream] + data).split(b"\n")
            partial[stream] = lines.pop()
            if lines:
                self.emit(stream, [line + b"\n" for line in lines])

        pidfd = os.pidfd_open(pid)

        def on_exit(fd: int, ev: int) -> None:
            self.unwatch(fd)
            os.close(fd)
            _, status = os.waitpid(pid, 0)
            code.append(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status)
                        else 128 + os.WTERMSIG(status))

        for fd in pipes:
            self.watch(fd, on_output)
        self.watch(pidfd, on_exit)
        while not code:
            self.step(None)
        deadline = time.monotonic() + DRAIN_SECONDS
        while streams and self.step(deadline - time.monotonic()):
            pass
        for fd in list(streams):  # a process outside the container still holds a pipe
            self.unwatch(fd)
            os.close(fd)
        return code[0]

    def emit(self, stream: int, lines: list[bytes]) -> None:
        """Lines of one read to the json-file log, and the same entries to `logs -f` followers."""
        encoded = self.log.write_lines("stdout" if stream == STDOUT else "stderr", lines, now_ns())
        if self.clients.followers:
            self.clients.send(self.clients.followers, encoded)

    # -- the record --------------------------------------------------------------------
    def mark_running(self, pid: int) -> None:
        with self.store.edit(self.cid) as rec:
            rec.state.status, rec.state.pid = Status.RUNNING, pid
            rec.state.started_at = self.started_at = now_ns()
            rec.state.exit_code, rec.state.oom_killed, rec.state.error = 0, False, ""
            self.record = rec

    def mark_exited(self, code: int, oom: bool, ran: float, backoff: float) -> float | None:
        """Record the exit; the delay before a restart, or None if the container stays down."""
        with self.store.edit(self.cid) as rec:
            st = rec.state
            st.pid, st.exit_code, st.oom_killed, st.finished_at = 0, code, oom, now_ns()
            again = restart.should_restart(rec.config.restart_policy, code, st.restart_count,
                                           st.stopped_by_user)
            st.status = Status.RESTARTING if again else Status.EXITED
            self.record = rec
        self.last_exit = code
        return restart.next_backoff(backoff, ran) if again else None

    def mark_failed(self, err: LabkitError, first: bool) -> None:
        """The process could not be started. As in Docker and podman, a container that never ran
        stays created (with ExitCode 126/127 and the error); one that ran before is exited."""
        with self.store.edit(self.cid) as rec:
            rec.state.pid = 0
            if first and rec.state.started_at is None:
                rec.state.status = Status.CREATED
            else:
                rec.state.status, rec.state.finished_at = Status.EXITED, now_ns()
            rec.state.error = err.what
            rec.state.exit_code = getattr(err, "exit_code", 0) or 128
            self.record = rec

    def stopped_by_user(self) -> bool:
        self.record = self.store.load(self.cid)
        return self.record.state.stopped_by_user

    # -- the whole life ------------------------------------------------------------------
    def main(self, ready_fd: int) -> int:
        backoff = 0.0
        first = True
        while True:
            try:
                pid, pipes = self.create()
                faults.point("monitor:created")
                self.wire(pid)
                if first and self.hold:
                    os.write(ready_fd, json.dumps({"pid": pid, "held": True}).encode() + b"\n")
                    deadline = time.monotonic() + HOLD_SECONDS
                    while not self.clients.attached and time.monotonic() < deadline:
                        self.step(deadline - time.monotonic())
                rt.start(self.cid, self.runtime_root)
                if self.console_listener is not None:
                    pipes = self.receive_console()
                faults.point("monitor:started")
            except LabkitError as err:
                self._discard_runtime_state()
                self.unwire()
                if first:
                    reply = {"error": err.what, "hint": err.hint}
                    if isinstance(err, init.ExecError):
                        reply["exit_code"] = err.exit_code
                    os.write(ready_fd, json.dumps(reply).encode() + b"\n")
                self.mark_failed(err, first)
                return 1
            self.mark_running(pid)
            if first:
                if not self.hold:
                    os.write(ready_fd, json.dumps({"pid": pid}).encode() + b"\n")
                os.close(ready_fd)
                first = False
            began = time.monotonic()
            code = self.run_once(pid, pipes)
            self.master = None  # closed with the other outputs
            oom = self._oom_killed()
            self._discard_runtime_state()
            self.unwire()
            if self.stdin_w is not None:
                os.close(self.stdin_w)
                self.stdin_w = None
            delay = self.mark_exited(code, oom, time.monotonic() - began, backoff)
            self.end_run(code)
            if delay is None or not self._sleep(delay):
                break
            backoff = delay
            with self.store.edit(self.cid) as rec:
                rec.state.restart_count += 1
        self.clients.close_all(self.clients.followers)
        self.log.close()
        if self.record.config.auto_remove:  # after a stop too, as Docker's
            self._auto_remove()
        return 0

    def _auto_remove(self) -> None:
        """--rm (docker's AutoRemove): the record, the bundle and the anonymous volumes go."""
        from .containers import Engine

        try:
            Engine(os.path.dirname(self.store.root)).remove_after_exit(self.cid)
        except LabkitError as err:
            print(f"labkit monitor {self.cid[:12]}: --rm: {err}", file=sys.stderr)

    def end_run(self, code: int) -> None:
        frame = json.dumps({"exit_code": code}).encode()
        self.clients.send(self.clients.attached, FRAME.pack(EXIT, len(frame)) + frame)
        for sock in list(self.clients.attached):
            self.forget(sock)
        for sock, _ in list(self.clients.waiters):
            self.reply(sock, {"exit_code": code})
        self.clients.waiters.clear()

    def _sleep(self, delay: float) -> bool:
        """The restart backoff; False if the user stopped the container meanwhile."""
        deadline = time.monotonic() + delay
        while time.monotonic() < deadline:
            self.step(deadline - time.monotonic())
            if self.stopped_by_user():
                with self.store.edit(self.cid) as rec:
                    rec.state.status = Status.EXITED
                return False
        return not self.stopped_by_user()

    def _oom_killed(self) -> bool:
        saved = rtstore.read_json(os.path.join(rtstore.state_dir(self.cid, self.runtime_root), "state.json")) or {}
        group = init.cgroups.Cgroup(**saved["cgroup"]) if saved.get("cgroup") else None
        stats = init.final_stats(group) or {}
        return bool(stats.get("oom_kills"))

    def _discard_runtime_state(self) -> None:
        """`labkit-runc delete`: the runtime's state dir and the container's cgroup."""
        if os.path.isdir(rtstore.state_dir(self.cid, self.runtime_root)):
            try:
                rt.delete(self.cid, force=True, root=self.runtime_root)
            except LabkitError as err:
                print(f"labkit monitor {self.cid[:12]}: delete after exit: {err}", file=sys.stderr)


def _null_stdio() -> None:
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3) or not argv[1].isdigit() or argv[2:] not in ([], ["--hold"]):
        print("usage: python -m labkit.engine.monitor ID READY_FD [--hold]", file=sys.stderr)
        return 2
    from .. import sys as lsys

    site = os.environ.get("LABKIT_SITE_PACKAGES")
    if site and site not in sys.path:  # pyroute2 and dnslib, for networking (we run with -S)
        sys.path.append(site)
    lsys.set_child_subreaper()
    return Monitor(argv[0], hold=argv[2:] == ["--hold"]).main(int(argv[1]))


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
