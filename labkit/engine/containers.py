"""The engine's container operations: what dockerd does between the CLI (or API) and runc.

Every verb is one method of `Engine`; the CLI and the daemon are thin callers.
A container is a record (labkit.engine.records) plus, while it runs, a monitor
process (labkit.engine.monitor) that owns its stdio, logs and restarts:

    <data root>/containers/<id>/config.json, state.json   the record
    <data root>/containers/<id>/bundle/                     generated OCI bundle
    <data root>/containers/<id>/<id>-json.log               json-file log
    <data root>/containers/<id>/ctl.sock, monitor.log       the monitor's socket, its own errors
    <run root>/runtime/<id>/                                the runtime's state while it runs

Errors are the engine's kinds (NotFound 404, Conflict 409, Invalid 400,
NotModified 304), with Docker's wording.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import sysconfig
from typing import Any, Iterator

from .. import settings
from ..errors import LabkitError
from ..runtime import container as rt
from ..runtime import store as rtstore
from ..runtime.init import ExecError, wait_for_exit
from . import faults, logs, mounts, networking, restart, volumes
from .errors import Conflict, Invalid, NotFound
from .networks import Network
from .records import ContainerConfig, ContainerRecord, Mount, Store, _flock
from .status import Event, Status, check, is_running
from .timefmt import now_ns

MONITOR_LOG = "monitor.log"
CREATE_LOCK = ".create.lock"


class Engine:
    """All containers under one data root (settings.data_root() unless given)."""

    def __init__(self, data_root: str | None = None) -> None:
        root = data_root or settings.data_root()
        self.data_root = root
        self.store = Store(os.path.join(root, "containers"))
        self.volumes = volumes.VolumeStore(os.path.join(root, "volumes"))
        self.networks = networking.NetworkStore(os.path.join(root, "networks"))
        self.runtime_root = settings.runtime_root()

    def __repr__(self) -> str:
        return f"<Engine {os.path.dirname(self.store.root)}>"

    # -- images --------------------------------------------------------------------------
    def image(self, ref: str, pull: bool = True):
        """The image `ref` names in the store (`busybox` is built offline on first use). As
        `docker run`, a missing image is pulled, but only from a registry the reference names
        (127.0.0.1:5000/app:1): a bare name would mean Docker Hub, which this lab never calls."""
        from ..images import builtin
        from ..registry.pull import default_store
        from ..registry.pull import pull as pull_image
        from ..registry.reference import parse_reference

        store = default_store()
        try:
            return builtin.open_image_or_builtin(store, ref)
        except LabkitError:
            first = ref.split("/")[0]
            names_registry = "/" in ref and ("." in first or ":" in first or first == "localhost")
            if not (pull and names_registry):
                raise NotFound(f"Unable to find image '{ref}' locally",
                               "labkit pulls only from a registry the name includes (HOST:PORT/NAME:TAG), "
                               "never from Docker Hub: build or import it, or pull it from your registry; "
                               "busybox works offline") from None
        print(f"Unable to find image '{ref}' locally", file=sys.stderr)
        try:
            pull_image(parse_reference(ref), store)
        except LabkitError as err:
            raise NotFound(f"pulling {ref} failed: {err.what}", err.hint) from None
        return builtin.open_image_or_builtin(store, ref)

    # -- create ------------------------------------------------------------------------
    def create(self, config: ContainerConfig, name: str | None = None) -> ContainerRecord:
        """A new container in status created: its record and its bundle (`docker create`)."""
        restart.check_auto_remove(config.restart_policy, config.auto_remove)
        restart.parse_stop_signal(config.stop_signal)
        from . import ocispec  # the image machinery: only create needs it (ps, logs, stop start faster)

        mounts.check_unique_targets(config.mounts)
        if config.init:
            ocispec.init_binary()
        config = networking.check(config, self.store, self.networks)
        image = self.image(config.image)
        if config.publish_all:  # -P: each EXPOSE not published with -p gets a free host port
            given = {networking.port_key(p) for p in config.ports}
            config = dataclasses.replace(config, ports=config.ports + tuple(
                p for p in networking.exposed_ports(image.config.config.exposed_ports)
                if networking.port_key(p) not in given))
        made_volumes: list[str] = []
        try:
            resolved = self._resolve_volumes(config, image, made_volumes)
            faults.point("create:volumes-made")
            config = dataclasses.replace(config, image_id=image.id, mounts=tuple(resolved),
                                         stop_signal=config.stop_signal or image.config.config.stop_signal
                                         or "SIGTERM")  # --stop-signal, else the image's STOPSIGNAL
            record = self.store.create(config, name)
        except BaseException:
            self._drop_volumes(made_volumes)
            raise
        # Held until the bundle is complete: a record without a bundle and without this lock
        # is what a crash left (see _reconciled).
        with _flock(self.store.path(record.id, CREATE_LOCK)):
            faults.point("create:record-written")
            try:
                networking.join(record, self.networks)
                oci = mounts.oci_mounts(list(config.mounts), self.volumes.path)
                files = networking.files(record, self.store.path(record.id), self.networks)
                bundle = ocispec.write_bundle(self.store.path(record.id, "bundle"), image, record.id, config,
                                              oci + files, init_files=[m.destination for m in files])
                self._populate_volumes(config, bundle)
            except BaseException:
                self.networks.release(record.id)
                self.store.remove(record.id)
                self._drop_volumes(made_volumes)
                raise
        return record

    def _resolve_volumes(self, config: ContainerConfig, image: Any, made: list[str]) -> list[Mount]:
        """Anonymous volumes get a name, and so does every VOLUME of the image not mounted over."""
        out = []
        for m in config.mounts:
            if m.type == "volume" and not m.source:
                vol = self.volumes.create(anonymous=True)
                made.append(vol.name)
                m = dataclasses.replace(m, source=vol.name)
            elif m.type == "volume":
                self.volumes.create(m.source)  # docker run -v NAME:/path makes NAME if missing
            out.append(m)
        taken = {m.target.rstrip("/") for m in out}
        for target in sorted((image.config.config.volumes or {})):
            if target.rstrip("/") not in taken:
                vol = self.volumes.create(anonymous=True)
                made.append(vol.name)
                out.append(Mount("volume", target, vol.name))
        return out

    def _populate_volumes(self, config: ContainerConfig, bundle: Any) -> None:
        """Docker's copy-up: an empty volume gets the image's content at its mount point."""
        for m in config.mounts:
            if m.type == "volume" and "nocopy" not in m.options:
                self.volumes.populate_from_image(self.volumes.get(m.source), list(reversed(bundle.overlay.lowers)),
                                                 m.target)

    def _drop_volumes(self, names: list[str]) -> None:
        for n in names:
            with contextlib.suppress(LabkitError):
                self.volumes.remove(n, force=True)

    # -- reading -----------------------------------------------------------------------
    def get(self, ref: str) -> ContainerRecord:
        reap_monitors()
        return self._reconciled(self.store.get(ref))

    def list(self, all: bool = False) -> list[ContainerRecord]:
        found = [self._reconciled(r) for r in self.store.list()]
        return found if all else [r for r in found if is_running(r.state.status)]

    def _reconciled(self, rec: ContainerRecord) -> ContainerRecord:
        """A record must not claim a live container whose monitor is gone (engine crash,
        machine reboot, a killed monitor): it becomes exited, as dockerd's restore does. A
        create that died before its bundle was complete leaves a dead record, for `rm`."""
        if rec.state.status == Status.CREATED and not self._monitor_alive(rec):
            if not os.path.exists(self.store.path(rec.id, "bundle", "config.json")) and self._create_finished(rec):
                with self.store.edit(rec.id) as fresh:
                    fresh.state.status = Status.DEAD
                    fresh.state.error = "the create did not finish (its process died): remove it"
                    rec = fresh
            self._discard_runtime_state(rec.id)  # a monitor killed between create and start
            return rec
        if rec.state.status in (Status.RUNNING, Status.PAUSED, Status.RESTARTING) and not self._monitor_alive(rec):
            with self.store.edit(rec.id) as fresh:
                if fresh.state.status in (Status.RUNNING, Status.PAUSED, Status.RESTARTING) \
                        and not self._monitor_alive(fresh):
                    fresh.state.status, fresh.state.pid = Status.EXITED, 0
                    fresh.state.finished_at = fresh.state.finished_at or now_ns()
                    fresh.state.exit_code = fresh.state.exit_code or 255
                    fresh.state.error = "the container's monitor ended without recording its exit"
                rec = fresh
            self._discard_runtime_state(rec.id)
        return rec

    def _create_finished(self, rec: ContainerRecord) -> bool:
        """No create is writing this record's bundle now (its lock is free)."""
        fd = os.open(self.store.path(rec.id, CREATE_LOCK), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False
        finally:
            os.close(fd)

    @staticmethod
    def _monitor_alive(rec: ContainerRecord) -> bool:
        pid = rec.state.monitor_pid
        return bool(pid) and rtstore.proc_start_time(pid) == rec.state.monitor_start

    def _discard_runtime_state(self, cid: str) -> None:
        if os.path.isdir(rtstore.state_dir(cid, self.runtime_root)):
            with contextlib.suppress(LabkitError):
                rt.delete(cid, force=True, root=self.runtime_root)

    # -- start -------------------------------------------------------------------------
    def start(self, ref: str, hold: bool = False) -> ContainerRecord:
        """Start the container under a new monitor; returns once its process runs (or failed).

        `hold`: the monitor waits for an attach before the process execs (`labkit run`)."""
        rec = self.get(ref)
        with _flock(self.store.path(rec.id, ".start.lock")):
            rec = self.get(rec.id)
            check(rec.state.status, Event.START, rec.name)
            if rec.state.status == Status.RESTARTING:  # the monitor will start it: docker says running
                return rec
            with self.store.edit(rec.id) as fresh:
                fresh.state.stopped_by_user = False
            try:
                self._spawn_monitor(rec, hold)
            except LabkitError:
                if rec.config.auto_remove:  # docker run --rm: a container that never ran goes too
                    self.remove(rec.id, force=True, remove_volumes=True)
                raise
        return self.get(rec.id)

    def _spawn_monitor(self, rec: ContainerRecord, hold: bool) -> None:
        ready_r, ready_w = os.pipe()
        cmd = [sys.executable, "-S", "-m", "labkit.engine.monitor", rec.id, str(ready_w)] + (["--hold"] if hold else [])
        with open(self.store.path(rec.id, MONITOR_LOG), "ab") as err:
            try:
                proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                        pass_fds=(ready_w,), start_new_session=True, env=_monitor_env(self))
            finally:
                os.close(ready_w)
        faults.point("start:monitor-spawned")
        with self.store.edit(rec.id) as fresh:
            fresh.state.monitor_pid, fresh.state.monitor_start = proc.pid, rtstore.proc_start_time(proc.pid)
        with os.fdopen(ready_r, "rb") as ready:
            line = ready.readline()
        _CHILDREN.append(proc)
        answer = json.loads(line) if line else {"error": "the container's monitor exited without reporting",
                                                "hint": f"see {self.store.path(rec.id, MONITOR_LOG)}"}
        if "error" in answer:
            wait_for_exit(proc.pid, 10)
            message = f"failed to start container {rec.name}: {answer['error']}"
            if "exit_code" in answer:
                raise ExecError(message, answer.get("hint", ""), answer["exit_code"])
            raise LabkitError(message, answer.get("hint", ""))

    # -- stop, kill, restart, pause ----------------------------------------------------
    def stop(self, ref: str, timeout: int | None = None, sig: str | int | None = None) -> ContainerRecord:
        """The stop signal, then SIGKILL after `timeout` seconds (`docker stop`); the
        restart policy does not bring it back."""
        rec = self.get(ref)
        check(rec.state.status, Event.STOP, rec.name)  # NotModified if already stopped
        with self.store.edit(rec.id) as fresh:
            fresh.state.stopped_by_user = True
            rec = fresh
        if rec.state.status == Status.RESTARTING:
            self._wake_monitor(rec)
        else:
            grace = restart.parse_stop_timeout(rec.config.stop_timeout if timeout is None else timeout)
            stop_signal = restart.parse_stop_signal(sig or rec.config.stop_signal)
            pid = rec.state.pid
            self._signal(rec, stop_signal)
            if rec.state.status == Status.PAUSED:
                with contextlib.suppress(LabkitError):
                    rt.resume(rec.id, self.runtime_root)  # so it can act on the signal
            if not wait_for_exit(pid, None if grace < 0 else grace):
                self._signal(rec, signal.SIGKILL)
        self._wait_monitor(rec)
        try:
            return self.get(rec.id)
        except NotFound:  # --rm: its monitor removed it
            return rec

    def kill(self, ref: str, sig: str | int = "KILL") -> ContainerRecord:
        rec = self.get(ref)
        if rec.state.status not in (Status.RUNNING, Status.PAUSED):
            raise Conflict(f"Cannot kill container: {ref}: Container {rec.id} is not running")
        number = restart.parse_stop_signal(sig)
        with self.store.edit(rec.id) as fresh:  # moby's killWithSignal: ExitOnNext, no restart
            fresh.state.stopped_by_user = True
        self._signal(rec, number)
        if rec.state.status == Status.PAUSED:  # a frozen task acts on a signal only once thawed (v1)
            with contextlib.suppress(LabkitError):
                rt.resume(rec.id, self.runtime_root)
        if number == signal.SIGKILL:  # as docker: return once it is dead
            wait_for_exit(rec.state.pid, 10)
        return rec

    def restart(self, ref: str, timeout: int | None = None) -> ContainerRecord:
        rec = self.get(ref)
        if is_running(rec.state.status):
            self.stop(rec.id, timeout)
        return self.start(rec.id)  # a user's restart is not counted in RestartCount

    def pause(self, ref: str) -> ContainerRecord:
        rec = self.get(ref)
        check(rec.state.status, Event.PAUSE, rec.name)
        rt.pause(rec.id, self.runtime_root)
        with self.store.edit(rec.id) as fresh:
            fresh.state.status = Status.PAUSED
            return fresh

    def unpause(self, ref: str) -> ContainerRecord:
        rec = self.get(ref)
        check(rec.state.status, Event.UNPAUSE, rec.name)
        rt.resume(rec.id, self.runtime_root)
        with self.store.edit(rec.id) as fresh:
            fresh.state.status = Status.RUNNING
            return fresh

    def _signal(self, rec: ContainerRecord, sig: int) -> None:
        try:
            rt.kill(rec.id, int(sig), self.runtime_root)
        except (LabkitError, ProcessLookupError):
            pass  # it exited meanwhile

    def _wake_monitor(self, rec: ContainerRecord) -> None:
        if self._monitor_alive(rec):
            with contextlib.suppress(ProcessLookupError):
                os.kill(rec.state.monitor_pid, signal.SIGTERM)

    def _wait_monitor(self, rec: ContainerRecord, timeout: float = 30) -> None:
        if self._monitor_alive(rec) and not wait_for_exit(rec.state.monitor_pid, timeout):
            raise LabkitError(f"the monitor of {rec.name} did not finish within {timeout} s",
                              f"see {self.store.path(rec.id, MONITOR_LOG)}")

    # -- remove ------------------------------------------------------------------------
    def remove(self, ref: str, force: bool = False, remove_volumes: bool = False) -> str:
        """`docker rm [-f] [-v]`: the record, its bundle (writable layer), its log; with -v its
        anonymous volumes. Named volumes stay."""
        rec = self.get(ref)
        check(rec.state.status, Event.FORCE_REMOVE if force else Event.REMOVE, rec.name)
        if is_running(rec.state.status):
            with self.store.edit(rec.id) as fresh:
                fresh.state.stopped_by_user = True
            if rec.state.status == Status.RESTARTING:
                self._wake_monitor(rec)
            else:
                self._signal(rec, signal.SIGKILL)
                if rec.state.status == Status.PAUSED:
                    with contextlib.suppress(LabkitError):
                        rt.resume(rec.id, self.runtime_root)
            self._wait_monitor(rec)
            if not os.path.isdir(self.store.path(rec.id)):  # --rm: its monitor removed it
                return rec.id
        faults.point("rm:killed")
        self._discard_runtime_state(rec.id)
        faults.point("rm:runtime-deleted")
        if remove_volumes:
            self.remove_after_exit(rec.id)
        else:
            self.store.remove(rec.id)
            self._leave_networks(rec)
        return rec.id

    def clear(self, tolerant: bool = False) -> tuple[list[str], list[str]]:
        """Remove every container (killed if running, with its anonymous volumes) and every
        volume: a chapter's or a test's cleanup. The names that were there; with `tolerant`,
        one that refuses to go does not stop the rest."""
        records, vols = self.list(all=True), self.volumes.list()
        for rec in records:
            with contextlib.suppress(*((LabkitError,) if tolerant else ())):
                self.remove(rec.id, force=True, remove_volumes=True)
        for vol in self.volumes.list():
            with contextlib.suppress(*((LabkitError,) if tolerant else ())):
                self.volumes.remove(vol.name, force=True)
        self.clear_networks()
        return [r.name for r in records], [v.name for v in vols]

    # -- networks ----------------------------------------------------------------------
    def _leave_networks(self, rec: ContainerRecord) -> None:
        """A removed container's addresses are free. Its ports were unpublished when it
        stopped, unless its monitor died first: then the nft table is rewritten here."""
        if self.networks.release(rec.id) and rec.state.ports:
            networking.sync_rules(self.data_root)

    def clear_networks(self) -> list[str]:
        """Every network of this data root, its bridge and nft table; ip_forward restored once
        no labkit bridge is left on the host."""
        if not os.path.isdir(self.networks.root):
            return []
        gone = self.networks.remove_all()
        networking.sync_rules(self.data_root)
        networking.restore_forwarding()
        return gone

    def create_network(self, name: str, **options: Any) -> Network:
        """`docker network create`: the record, its bridge, and its rules in the nft table."""
        net = self.networks.create(name, **options)
        networking.sync_rules(self.data_root)
        return net

    def remove_network(self, ref: str) -> str:
        """`docker network rm` (refused while containers use it): its bridge and rules go."""
        net = self.networks.remove(ref)
        networking.sync_rules(self.data_root)
        networking.restore_forwarding()
        return net.name

    def prune_networks(self) -> list[str]:
        """`docker network prune`: every user network without containers."""
        gone = [n.name for n in self.networks.list() if not n.predefined and not n.endpoints]
        for name in gone:
            self.networks.remove(name)
        networking.sync_rules(self.data_root)
        networking.restore_forwarding()
        return gone

    def connect(self, network: str, ref: str, aliases: list[str] | None = None, ip: str | None = None) -> None:
        """`docker network connect`: an address on the network, and a veth now if it runs."""
        rec = self.get(ref)
        if rec.config.network_mode in ("host", "none") or rec.config.network_mode.startswith("container:"):
            raise Invalid(f"container sharing network namespace with another container or host cannot be "
                          f"connected to any other network (its mode is {rec.config.network_mode})")
        net = self.networks.connect(network, rec.id, aliases=aliases, ip=ip)
        if rec.state.status in (Status.RUNNING, Status.PAUSED):
            try:
                networking.attach_running(rec, net, self.data_root)
            except BaseException:
                self.networks.disconnect(net.id, rec.id)
                raise

    def disconnect(self, network: str, ref: str, force: bool = False) -> None:
        rec = self.get(ref)
        net = self.networks.get(network)
        ep = net.endpoints.get(rec.id)
        if ep is None:
            raise NotFound(f"container {rec.id[:12]} is not connected to network {net.name}")
        networking.detach(ep)
        self.networks.disconnect(net.id, rec.id)
        networking.sync_rules(self.data_root)

    def network_users(self, network: str) -> list[ContainerRecord]:
        net = self.networks.get(network)
        return [r for r in self.store.list() if r.id in net.endpoints]

    def _is_anonymous(self, name: str) -> bool:
        with contextlib.suppress(NotFound):
            return bool(self.volumes.get(name).anonymous)
        return False

    def volume_users(self, name: str) -> list[str]:
        """The containers (ids) whose mounts use volume `name`: it cannot be removed while any do."""
        return [r.id for r in self.store.list()
                if any(m.type == "volume" and m.source == name for m in r.config.mounts)]

    def remove_volume(self, name: str, force: bool = False) -> None:
        self.volumes.remove(name, users=self.volume_users(name), force=force)

    def prune_volumes(self, all: bool = False) -> list[str]:
        in_use = {m.source for r in self.store.list() for m in r.config.mounts if m.type == "volume"}
        return self.volumes.prune(in_use, all=all)

    def wait_removed(self, ref: str, timeout: float = 30) -> None:
        """Until an --rm container's monitor has removed it (`docker run --rm` returns then)."""
        with contextlib.suppress(NotFound):
            rec = self.store.get(ref)
            if self._monitor_alive(rec):
                wait_for_exit(rec.state.monitor_pid, timeout)

    def remove_after_exit(self, cid: str) -> None:
        """--rm: the monitor removes its exited container, and its anonymous volumes."""
        rec = self.store.load(cid)
        self.store.remove(cid)
        self._leave_networks(rec)
        for m in rec.config.mounts:
            if m.type == "volume" and self._is_anonymous(m.source) and not self.volume_users(m.source):
                with contextlib.suppress(LabkitError):
                    self.volumes.remove(m.source)

    def rename(self, ref: str, new_name: str) -> None:
        self.store.rename(ref, new_name)

    # -- waiting, logs, attach ---------------------------------------------------------
    def wait(self, ref: str) -> int:
        """Block until the container's current run ends; its exit code (`docker wait`).

        An event, not a poll: the monitor answers on its socket when the run is over."""
        rec = self.get(ref)
        if rec.state.status in (Status.RUNNING, Status.PAUSED, Status.RESTARTING):
            try:
                with self._request(rec, {"op": "wait", "started_at": rec.state.started_at}) as sock:
                    line = sock.makefile("rb").readline()
                if line:
                    return int(json.loads(line)["exit_code"])
            except OSError:
                pass  # the monitor ended meanwhile: its record has the answer
            if self._monitor_alive(rec):
                wait_for_exit(rec.state.monitor_pid)
            rec = self.get(rec.id)
        return rec.state.exit_code

    def _request(self, rec: ContainerRecord, request: dict[str, Any]) -> socket.socket:
        """A connection to the monitor's ctl.sock carrying one request line (see
        labkit.engine.monitor); connected through /proc/self/fd, as sun_path holds 108 bytes."""
        dirfd = os.open(self.store.path(rec.id), os.O_PATH | os.O_DIRECTORY)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(f"/proc/self/fd/{dirfd}/ctl.sock")
            sock.sendall(json.dumps(request).encode() + b"\n")
        except OSError:
            sock.close()
            raise
        finally:
            os.close(dirfd)
        return sock

    def attach(self, ref: str) -> socket.socket:
        """A socket carrying the run's output as Docker's multiplexed stream; what is written
        to it goes to the container's stdin (see labkit.engine.monitor)."""
        rec = self.get(ref)
        # A live monitor is the test, not the status: `start -a` of an exited container attaches
        # while its new monitor holds the process (the record says running only after that).
        if rec.state.status == Status.DEAD or not self._monitor_alive(rec):
            raise Conflict("You cannot attach to a stopped container, start it first")
        try:
            return self._request(rec, {"op": "attach"})
        except OSError:
            raise Conflict("You cannot attach to a stopped container, start it first") from None

    def resize(self, ref: str, height: int, width: int) -> None:
        """The container's terminal size (-t), as `docker attach` sets it on SIGWINCH."""
        rec = self.get(ref)
        with contextlib.suppress(OSError), self._request(rec, {"op": "resize", "height": height,
                                                               "width": width}) as sock:
            sock.makefile("rb").readline()

    def log_path(self, rec: ContainerRecord) -> str:
        return logs.log_path(self.store.path(rec.id), rec.id)

    def logs(self, ref: str, follow: bool = False, tail: int | None = None, since: int | None = None,
             until: int | None = None, stdout: bool = True, stderr: bool = True) -> Iterator[logs.LogEntry]:
        """`docker logs`: the entries of the json-file log; with follow, then the new ones as the
        monitor writes them, until the container stops."""
        rec = self.get(ref)
        live = None
        if follow and is_running(rec.state.status):
            with contextlib.suppress(OSError):
                live = self._request(rec, {"op": "follow"})  # subscribe first, so nothing falls between file and stream
        last = 0
        for entry in logs.read_logs(self.log_path(rec), tail=tail, since=since, until=until,
                                    stdout=stdout, stderr=stderr):
            last = max(last, entry.time)
            yield entry
        if live is None:
            return
        with live:
            for raw in live.makefile("rb"):
                entry = logs.LogEntry.from_json_line(raw)
                wanted = stdout if entry.stream == "stdout" else stderr
                if entry.time > last and wanted and (until is None or entry.time < until):
                    yield entry

    # -- inside a running container ----------------------------------------------------
    def exec(self, ref: str, command: list[str], env: list[str] = (), user: str = "", workdir: str = "",
             detach: bool = False, tty: bool = False) -> int:
        """`docker exec`: a new process in the running container, with its namespaces, cgroup,
        capabilities, seccomp and user (as `runc exec`). Forks: CLI only. Its exit code, or 0
        with `detach`."""
        from ..images.runspec import resolve_user
        from ..runtime import init, setns
        from ..runtime.spec import Spec
        from .. import sys as lsys

        rec = self.get(ref)
        if rec.state.status != Status.RUNNING:
            if rec.state.status == Status.PAUSED:
                raise Conflict(f"Container {rec.id} is paused, unpause the container before exec")
            raise Conflict(f"Container {rec.id} is not running")
        if not command:
            raise Invalid("exec needs a command", "e.g. labkit exec NAME sh -c 'echo hi'")
        base = Spec.load(self.store.path(rec.id, "bundle")).process
        assert base is not None
        process = dataclasses.replace(base, args=list(command), terminal=tty)
        process.env = _merge_env(base.env, list(env))
        if workdir:
            process.cwd = workdir
        if user:
            root = f"/proc/{rec.state.pid}/root"
            process.user = resolve_user(user, _read(root + "/etc/passwd"), _read(root + "/etc/group"))
        if not detach:
            lsys.set_child_subreaper()
        if tty and not detach:
            from . import terminal

            with terminal.ConsoleSocket() as console:
                pid = setns.exec_in(rec.id, process, self.runtime_root, console.path, reaper=True)
                master = console.receive()
            return terminal.relay(master, pid)
        pid = setns.exec_in(rec.id, process, self.runtime_root, reaper=not detach)
        if detach:
            return 0
        init.forward_signals(pid)
        return init.reap(pid)

    def top(self, ref: str) -> list[dict[str, Any]]:
        """The container's processes as the host sees them (`docker top`)."""
        rec = self.get(ref)
        if rec.state.status not in (Status.RUNNING, Status.PAUSED):
            raise Conflict(f"Container {rec.id} is not running")
        out = []
        for pid in sorted(rt.cgroup(rec.id, self.runtime_root).pids()):
            with contextlib.suppress(OSError):
                out.append({"PID": pid, "CMD": _cmdline(pid)})
        return out

    def stats(self, ref: str) -> dict[str, Any]:
        rec = self.get(ref)
        if rec.state.status not in (Status.RUNNING, Status.PAUSED):
            raise Conflict(f"Container {rec.id} is not running")
        return rt.cgroup(rec.id, self.runtime_root).stats()

    # -- engine start-up -----------------------------------------------------------------
    def restore(self) -> list[str]:
        """What dockerd does when it starts: records of dead containers become exited, and
        containers with restart policy always (or unless-stopped, not stopped by the user)
        are started again. The names it started."""
        self.store.cleanup()
        started = []
        for rec in self.list(all=True):
            policy = rec.config.restart_policy.name
            # Docker: `always` comes back even after a user's stop; `unless-stopped` only if not stopped
            wanted = policy == restart.ALWAYS or (policy == restart.UNLESS_STOPPED and not rec.state.stopped_by_user)
            if wanted and rec.state.status == Status.EXITED:
                with contextlib.suppress(LabkitError):
                    self.start(rec.id)
                    started.append(rec.name)
        return started


def _merge_env(base: list[str], extra: list[str]) -> list[str]:
    env = {e.split("=", 1)[0]: e for e in base}
    env.update({e.split("=", 1)[0]: e for e in extra})
    return list(env.values())


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def _cmdline(pid: int) -> str:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return " ".join(a.decode(errors="replace") for a in f.read().split(b"\0") if a)


def _monitor_env(engine: Engine) -> dict[str, str]:
    """The monitor imports this same labkit and uses this engine's roots."""
    env = dict(os.environ)
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = here + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    # -S skips site: the packages networking needs (pyroute2, dnslib) come from this interpreter's
    # site-packages, which the monitor appends to its path (after the standard library; no .pth runs).
    env["LABKIT_SITE_PACKAGES"] = sysconfig.get_paths()["purelib"]
    env["LABKIT_DATA_ROOT"] = os.path.dirname(engine.store.root)
    return env


# Monitors this process started: a long-lived caller (a notebook kernel) reaps the ones that
# ended, so they do not stay zombies; a CLI exits first and they go to the system's reaper.
_CHILDREN: list[subprocess.Popen] = []


def reap_monitors() -> None:
    _CHILDREN[:] = [p for p in _CHILDREN if p.poll() is None]
