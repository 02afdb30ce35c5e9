"""The engine as a Docker user drives it: `labkit run/ps/logs/exec/stop/rm/...` on the real kernel.

Each test runs the CLI in a subprocess (the monitor must outlive it) against a data root
of this module's; every container is removed afterwards, and the session's leak check
proves no monitor, cgroup or mount is left.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time

import pytest

from labkit import doctor
from labkit.engine import faults
from labkit.engine.containers import Engine

# On cgroup v2 in the VM: the tests that touch the container's cgroup (the freezer, the OOM count,
# stats, the cgroup left by a dead monitor) and one run, exec and stop. The rest does not depend on
# the cgroup version, and each `labkit` call costs seconds in the emulated VM.
vm = pytest.mark.vm


@pytest.fixture(autouse=True)
def engine_env(engine_data_root, monkeypatch):
    monkeypatch.setenv("LABKIT_DATA_ROOT", engine_data_root)
    yield
    Engine(engine_data_root).clear()


def lk(*args: str, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["labkit", *args], capture_output=True, text=True, timeout=timeout, **kw)


def inspect(ref: str, fmt: str) -> str:
    r = lk("inspect", "--format", fmt, ref)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_run_attached_streams_both_streams_and_returns_the_exit_code():
    r = lk("run", "--name", "att", "busybox", "sh", "-c", "echo out; echo err >&2; exit 3")
    assert (r.returncode, r.stdout, r.stderr) == (3, "out\n", "err\n")
    assert inspect("att", "{{.State.Status}} {{.State.ExitCode}} {{.Name}}") == "exited 3 /att"
    logs = lk("logs", "att")
    assert (logs.stdout, logs.stderr) == ("out\n", "err\n")  # the json-file log keeps each stream
    assert "Exited (3)" in lk("ps", "-a").stdout


def test_docker_exit_codes_for_what_cannot_run():
    assert lk("run", "--rm", "busybox", "/no/such/program").returncode == 127
    assert lk("run", "--rm", "busybox", "/etc/passwd").returncode == 126
    bad = lk("run", "--restart", "sometimes", "busybox", "true")
    assert bad.returncode == 125 and "restart policy" in bad.stderr
    assert lk("ps", "-aq").stdout == ""


@vm
def test_detached_container_lives_on_with_a_name_logs_exec_and_stop():
    r = lk("run", "-d", "--name", "web", "busybox", "sh", "-c", "echo started; exec sleep 300")
    assert r.returncode == 0, r.stderr
    cid = r.stdout.strip()
    assert len(cid) == 64
    assert inspect("web", "{{.State.Status}} {{.State.Running}}") == "running true"
    assert inspect(cid[:12], "{{.Id}}") == cid  # a unique prefix finds it too
    ps = lk("ps", "--format", "{{.Names}} {{.Status}}").stdout
    assert ps.startswith("web Up ")
    assert lk("exec", "web", "sh", "-c", "echo in-$(hostname); exit 4").stdout == f"in-{cid[:12]}\n"
    assert lk("exec", "web", "sh", "-c", "exit 4").returncode == 4
    assert lk("logs", "web").stdout == "started\n"
    taken = lk("run", "-d", "--name", "web", "busybox", "true")
    assert taken.returncode == 125 and "already in use" in taken.stderr
    started = time.monotonic()
    assert lk("stop", "-t", "1", "web").stdout == "web\n"  # sleep as PID 1 ignores TERM: KILL after 1 s
    assert 1 <= time.monotonic() - started < 10
    assert inspect("web", "{{.State.Status}} {{.State.ExitCode}}") == "exited 137"
    assert lk("rm", "web").returncode == 0
    assert lk("inspect", "web").returncode == 1


@vm
def test_init_forwards_term_and_reaps_zombies():
    lk("run", "-d", "--init", "--name", "inited", "busybox", "sh", "-c", "sleep 300 & wait")
    args = inspect("inited", "{{json .Path}} {{json .Args}}")
    assert args.startswith('"/sbin/docker-init" ["--","sh"')
    lk("stop", "-t", "20", "inited")
    assert inspect("inited", "{{.State.ExitCode}}") == "143"  # TERM reached sh: 128 + 15, no KILL needed


def test_restart_on_failure_counts_and_gives_up():
    lk("run", "-d", "--name", "flaky", "--restart", "on-failure:3", "busybox", "sh", "-c", "echo try; exit 1")
    assert lk("wait", "flaky").returncode == 0
    deadline = time.monotonic() + 30
    while inspect("flaky", "{{.State.Status}}") != "exited" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert inspect("flaky", "{{.RestartCount}} {{.State.ExitCode}} {{.State.Status}}") == "3 1 exited"
    assert lk("logs", "flaky").stdout == "try\n" * 4  # the first run and three restarts


def test_stop_cancels_always_and_wait_returns_the_code():
    lk("run", "-d", "--name", "always", "--restart", "always", "busybox", "sleep", "300")
    waiter = subprocess.Popen(["labkit", "wait", "always"], stdout=subprocess.PIPE, text=True)
    time.sleep(0.5)  # it blocks on the monitor's socket meanwhile
    assert waiter.poll() is None
    lk("kill", "always")  # SIGKILL (sleep as PID 1 would ignore TERM: no handler, and init)
    assert waiter.communicate(timeout=30)[0] == "137\n"
    assert inspect("always", "{{.State.Status}} {{.RestartCount}}") == "exited 0"  # kill is a user stop


@vm
def test_pause_and_unpause_are_states():
    lk("run", "-d", "--name", "frozen", "busybox", "sleep", "300")
    assert lk("pause", "frozen").returncode == 0
    assert inspect("frozen", "{{.State.Status}} {{.State.Paused}}") == "paused true"
    assert "(Paused)" in lk("ps").stdout
    refused = lk("exec", "frozen", "true")
    assert refused.returncode != 0 and "paused" in refused.stderr
    assert lk("unpause", "frozen").returncode == 0
    assert inspect("frozen", "{{.State.Status}}") == "running"
    assert lk("rm", "frozen").returncode == 1  # running: refused without -f
    lk("pause", "frozen")
    assert lk("kill", "frozen").returncode == 0  # a frozen container is thawed, or it could not die (v1)
    assert inspect("frozen", "{{.State.Status}} {{.State.ExitCode}}") == "exited 137"
    assert lk("rm", "frozen").returncode == 0


@vm
def test_oom_killed_is_recorded():
    r = lk("run", "--name", "hog", "-m", "16m", "--memory-swap", "16m", "busybox",
           "sh", "-c", "head -c 64m /dev/zero | tail > /dev/null")
    assert inspect("hog", "{{.State.OOMKilled}}") == "true", r


def test_log_rotation_and_tail():
    r = lk("run", "--name", "chatty", "--log-opt", "max-size=2k", "--log-opt", "max-file=2", "busybox",
           "sh", "-c", "i=0; while [ $i -lt 200 ]; do echo line-$i; i=$((i+1)); done")
    assert r.returncode == 0
    data = Engine().get("chatty")
    log = Engine().log_path(data)
    assert os.path.exists(log + ".1") and not os.path.exists(log + ".2")
    assert os.path.getsize(log) <= 2000
    tail = lk("logs", "--tail", "2", "chatty").stdout
    assert tail == "line-198\nline-199\n"
    first = json.loads(open(log).readline())
    assert set(first) == {"log", "stream", "time"} and first["stream"] == "stdout"


def test_named_volume_outlives_the_container():
    lk("run", "--rm", "-v", "notes:/data", "busybox", "sh", "-c", "echo kept > /data/file; echo lost > /tmp/file")
    r = lk("run", "--rm", "-v", "notes:/data", "busybox", "sh", "-c", "cat /data/file; cat /tmp/file")
    assert r.stdout == "kept\n" and "No such file" in r.stderr
    assert "notes" in lk("volume", "ls", "-q").stdout.split()
    lk("run", "-d", "--name", "user", "-v", "notes:/data", "busybox", "sleep", "300")
    busy = lk("volume", "rm", "notes")
    assert busy.returncode == 1 and "in use" in busy.stderr
    lk("rm", "-f", "user")
    assert lk("volume", "rm", "notes").returncode == 0


def test_bind_mount_both_ways_and_read_only(tmp_path):
    host = tmp_path / "shared"
    host.mkdir()
    (host / "from-host").write_text("hi\n")
    r = lk("run", "--rm", "-v", f"{host}:/mnt", "busybox", "sh", "-c", "cat /mnt/from-host; echo back > /mnt/from-ctr")
    assert r.stdout == "hi\n" and (host / "from-ctr").read_text() == "back\n"
    ro = lk("run", "--rm", "-v", f"{host}:/mnt:ro", "busybox", "sh", "-c", "echo x > /mnt/nope")
    assert ro.returncode != 0 and "Read-only file system" in ro.stderr
    rootfs = lk("run", "--rm", "--read-only", "busybox", "touch", "/x")
    assert rootfs.returncode != 0 and "Read-only file system" in rootfs.stderr


def test_copy_up_fills_a_new_volume_from_the_image():
    r = lk("run", "--rm", "-v", "etc-copy:/etc", "busybox", "cat", "/etc/passwd")
    assert r.returncode == 0 and r.stdout.startswith("root:")
    again = lk("run", "--rm", "-v", "etc-copy:/mnt", "busybox", "cat", "/mnt/passwd")
    assert again.stdout.startswith("root:")  # the copy lives in the volume now


@vm
def test_a_dead_monitor_leaves_no_running_record():
    lk("run", "-d", "--name", "orphan", "busybox", "sleep", "300")
    rec = Engine().get("orphan")
    os.kill(rec.state.monitor_pid, signal.SIGKILL)  # the container dies with it (pdeathsig)
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{rec.state.pid}") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert inspect("orphan", "{{.State.Status}} {{.State.ExitCode}}") == "exited 255"


def test_ps_filters_and_quiet():
    lk("run", "--name", "zero", "-l", "tier=a", "busybox", "true")
    lk("run", "--name", "one", "-l", "tier=b", "busybox", "false")
    assert lk("ps", "-a", "--filter", "exited=1", "--format", "{{.Names}}").stdout == "one\n"
    assert lk("ps", "-a", "--filter", "label=tier=a", "--format", "{{.Names}}").stdout == "zero\n"
    assert lk("ps", "-q").stdout == ""
    assert len(lk("ps", "-aq").stdout.split()) == 2


def _on_a_terminal(argv: list[str], keys: list[bytes], rows: int = 24, cols: int = 80) -> tuple[bytes, int]:
    """Run `argv` on a new pty of `rows`x`cols`, typing each of `keys` once the output so far
    ends with a shell prompt; everything it printed and its exit code."""
    import fcntl
    import pty
    import select
    import struct
    import termios

    pid, fd = pty.fork()
    if pid == 0:  # the child: our terminal gets a size, as a real one has
        fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        os.execvp(argv[0], argv)
    out, pending, typed_at = b"", list(keys), len(b"")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        # busybox ash asks the terminal where the cursor is (ESC [ 6 n) after its prompt; a
        # real terminal answers (ESC [ row ; col R), and so do we, then type at the prompt
        if out.endswith(b"\x1b[6n"):
            os.write(fd, b"\x1b[1;5R")
            out += b"\n"
            time.sleep(0.2)  # let the shell read the answer before the keys
            if pending:
                os.write(fd, pending.pop(0))
                typed_at = len(out)
        elif pending and re.search(rb"# (\x1b\[J)?$", out[typed_at:]):
            os.write(fd, pending.pop(0))
            typed_at = len(out)
        if not select.select([fd], [], [], 0.2)[0]:
            continue
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: the command exited and closed the terminal
            break
        if not chunk:
            break
        out += chunk
    else:
        os.kill(pid, signal.SIGKILL)  # a hung command fails the test, it does not hang the suite
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    return out, os.waitstatus_to_exitcode(status)


def test_run_it_is_an_interactive_shell_on_a_terminal_of_our_size():
    out, code = _on_a_terminal(["labkit", "run", "-it", "--name", "tty", "busybox", "sh"],
                               [b"echo $((6*7)); tty; stty size\n", b"exit 5\n"], rows=33, cols=101)
    assert code == 5, out
    assert b"\r\n42\r\n/dev/pts/0\r\n33 101\r\n" in out  # the container's own pty, resized to ours
    assert "42" in lk("logs", "tty").stdout  # the terminal's output is logged too


def test_exec_it_and_detach_keys():
    lk("run", "-d", "-it", "--name", "tty2", "busybox", "sh")
    out, code = _on_a_terminal(["labkit", "exec", "-it", "tty2", "sh"], [b"tty; exit 7\n"])
    assert code == 7 and b"/dev/pts/1" in out, out  # a second pty in the container's devpts
    out, code = _on_a_terminal(["labkit", "attach", "tty2"], [b"echo attached\n", b"\x10\x11"])
    assert code == 0 and b"attached" in out, out  # ctrl-p ctrl-q: detached, the shell runs on
    assert inspect("tty2", "{{.State.Status}}") == "running"


@pytest.mark.parametrize("point", faults.POINTS)
def test_a_crash_at_any_step_leaves_a_consistent_container_or_nothing(point, run_root):
    """The CLI or the monitor dies (SIGKILL) at each step of run and rm: afterwards the engine
    shows either nothing or one container in a state it can act on, and rm -f plus a volume
    prune leave no record, runtime state, monitor or volume."""
    crashing = {**os.environ, "LABKIT_FAULT": point}
    if point.startswith("rm:"):
        assert lk("run", "-d", "--name", "crash", "-v", "/anon", "busybox", "sleep", "300").returncode == 0
        died = lk("rm", "-f", "crash", env=crashing)
    else:
        died = lk("run", "-d", "--name", "crash", "-v", "/anon", "busybox", "sleep", "300", env=crashing)
    assert died.returncode in (-signal.SIGKILL, 125), died  # the CLI died, or its monitor did
    shown = lk("ps", "-a", "--format", "{{.Names}} {{.State}}").stdout.split("\n")[:-1]
    assert shown in ([], ["crash created"], ["crash running"], ["crash exited"], ["crash dead"]), shown
    if shown == ["crash running"]:  # running means running: its process is alive
        assert os.path.exists(f"/proc/{Engine().get('crash').state.pid}")
    if shown:
        removed = lk("rm", "-f", "-v", "crash")
        assert removed.returncode == 0, removed.stderr
    lk("volume", "prune")  # an anonymous volume made just before the crash is prunable
    assert lk("ps", "-aq").stdout == "" and lk("volume", "ls", "-q").stdout == ""
    runtime_dir = os.path.join(run_root, "runtime")
    assert not (os.path.isdir(runtime_dir) and os.listdir(runtime_dir))
    assert not [p for p in doctor.leaks() if p.kind == "process" and _ours(p.pid)]


def _ours(pid: int) -> bool:
    """A process of this test module's engine (other labkit sessions may run on this machine)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return f"LABKIT_DATA_ROOT={os.environ['LABKIT_DATA_ROOT']}".encode() in f.read().split(b"\0")
    except OSError:
        return False


def test_two_clis_never_give_one_name_to_two_containers():
    racers = [subprocess.Popen(["labkit", "create", "--name", "only", "busybox", "true"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    results = [(p.wait(60), p.stderr.read()) for p in racers]
    assert sorted(code for code, _ in results) == [0, 125, 125, 125], results
    assert all("already in use" in err for code, err in results if code)
    assert len(lk("ps", "-aq").stdout.split()) == 1


def test_engine_restore_brings_back_always_containers_as_dockerd_does_at_boot():
    lk("run", "-d", "--name", "back", "--restart", "always", "busybox", "sleep", "300")
    lk("run", "-d", "--name", "gone", "busybox", "sleep", "300")
    lk("run", "-d", "--name", "stopped", "--restart", "always", "busybox", "sleep", "300")
    lk("stop", "-t", "0", "stopped")  # always: back at the engine's start all the same, as dockerd
    for name in ("back", "gone"):  # as a reboot would: monitors and containers die at once
        os.kill(Engine().get(name).state.monitor_pid, signal.SIGKILL)
    for name in ("back", "gone"):
        deadline = time.monotonic() + 10
        while inspect(name, "{{.State.Status}}") != "exited" and time.monotonic() < deadline:
            time.sleep(0.05)
    assert sorted(lk("engine", "restore").stdout.split("\n")) == ["", "started back (restart policy)",
                                                                 "started stopped (restart policy)"]
    assert inspect("back", "{{.State.Status}}") == inspect("stopped", "{{.State.Status}}") == "running"
    assert inspect("gone", "{{.State.Status}}") == "exited"


def test_a_full_log_disk_does_not_kill_the_container():
    """The monitor's log writes fail (a 4 KiB file-size limit on the monitor stands in for a
    full disk: EFBIG like ENOSPC); lines are dropped, the container runs on and exits 0."""
    lk("run", "-d", "--name", "full", "busybox", "sh", "-c",
       "sleep 1; i=0; while [ $i -lt 2000 ]; do echo line-$i-padding-padding; i=$((i+1)); done; sleep 1")
    monitor = Engine().get("full").state.monitor_pid
    subprocess.run(["prlimit", f"--pid={monitor}", "--fsize=4096"], check=True)
    assert lk("wait", "full").stdout == "0\n"
    assert inspect("full", "{{.State.Status}} {{.State.ExitCode}}") == "exited 0"
    log = Engine().log_path(Engine().get("full"))
    assert os.path.getsize(log) <= 4096
    assert 0 < len(lk("logs", "full").stdout.split()) < 2000


@vm
def test_top_and_stats_read_the_containers_cgroup():
    lk("run", "-d", "--name", "busy", "-m", "64m", "--cpus", "0.5", "busybox", "sh", "-c", "while :; do :; done")
    top = lk("top", "busy").stdout.split("\n")
    assert top[0].split() == ["PID", "CMD"] and "sh -c while :; do :; done" in top[1]
    stats = lk("stats", "--no-stream", "busy").stdout.split("\n")
    assert stats[0].split()[:4] == ["CONTAINER", "ID", "NAME", "CPU"]
    name, cpu, mem = stats[1].split()[1], float(stats[1].split()[2].rstrip("%")), stats[1].split()[3:6]
    assert name == "busy" and 5 < cpu <= 60  # busy, but held to its --cpus 0.5 quota (measured over a second)
    assert mem[1:] == ["/", "64.00MiB"]


def test_start_attach_runs_an_exited_container_again_and_streams_it():
    lk("run", "--name", "again", "busybox", "sh", "-c", "echo run; exit 2")
    r = lk("start", "-a", "again")
    assert (r.returncode, r.stdout) == (2, "run\n")
    assert lk("logs", "again").stdout == "run\nrun\n"  # one log across both runs
    upper = json.loads(inspect("again", "{{json .GraphDriver.Data}}"))["UpperDir"]
    assert upper.endswith("/bundle/overlay/upper") and os.path.isdir(upper)


def test_an_images_volume_becomes_an_anonymous_volume_filled_from_the_image(tmp_path):
    (tmp_path / "Containerfile").write_text("FROM busybox\nRUN mkdir /data && echo seed > /data/seed\n"
                                            "VOLUME /data\nCMD [\"sh\", \"-c\", \"cat /data/seed; echo new >> /data/seed\"]\n")
    assert lk("build", str(tmp_path), "-t", "withvol").returncode == 0
    assert lk("run", "--name", "v1", "withvol").stdout == "seed\n"
    mounts = json.loads(inspect("v1", "{{json .Mounts}}"))
    assert [(m["Type"], m["Destination"], len(m["Name"])) for m in mounts] == [("volume", "/data", 64)]
    assert lk("start", "-a", "v1").stdout == "seed\nnew\n"  # the same volume across runs, copied up once
    assert lk("rm", "-v", "v1").returncode == 0
    assert mounts[0]["Name"] not in lk("volume", "ls", "-q").stdout  # rm -v took the anonymous volume
