"""A terminal for `labkit exec -t`: receive the pty master as conmon does, then relay it.

The runtime (`runc exec --console-socket`) makes the pty inside the container
and sends its master over a Unix socket (SCM_RIGHTS). This process then copies
its own terminal (in raw mode) to the master and back until the process exits.
"""
from __future__ import annotations

import os
import select
import shutil
import signal
import socket
import struct
import tempfile
import termios
import tty
from typing import Any

from ..runtime import init


class ConsoleSocket:
    """A listening Unix socket in a short temp dir (sun_path holds 108 bytes)."""

    def __enter__(self) -> "ConsoleSocket":
        self.dir = tempfile.mkdtemp(prefix="labkit-console-")
        self.path = os.path.join(self.dir, "console.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.path)
        self.sock.listen(1)  # the runtime's connect and message wait in the backlog
        return self

    def receive(self, timeout: float = 10) -> int:
        self.sock.settimeout(timeout)
        conn, _ = self.sock.accept()
        with conn:
            _, fds, _, _ = socket.recv_fds(conn, 64, 1)
        return fds[0]

    def __exit__(self, *exc: object) -> None:
        self.sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def set_size(master: int, rows: int, cols: int) -> None:
    import fcntl

    fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def relay(master: int, pid: int) -> int:
    """Copy stdin -> master and master -> stdout until `pid` exits; its exit code."""
    interactive = os.isatty(0)
    saved = termios.tcgetattr(0) if interactive else None

    def resize(*_: Any) -> None:
        size = os.get_terminal_size(0)
        set_size(master, size.lines, size.columns)

    previous = None
    if interactive:
        resize()
        previous = signal.signal(signal.SIGWINCH, resize)
        tty.setraw(0)
    pidfd = os.pidfd_open(pid)
    inputs = [master, pidfd, 0]  # without -i, stdin is /dev/null: it leaves at once
    try:
        while True:
            ready, _, _ = select.select(inputs, [], [])
            if master in ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the process closed its terminal
                    data = b""
                if not data:
                    inputs.remove(master)
                else:
                    os.write(1, data)
            if 0 in ready:
                data = os.read(0, 65536)
                if data:
                    os.write(master, data)
                else:
                    inputs.remove(0)
            if pidfd in ready:
                _drain(master)
                break
        return init.reap(pid)
    finally:
        os.close(pidfd)
        os.close(master)
        if saved is not None:
            termios.tcsetattr(0, termios.TCSADRAIN, saved)
            signal.signal(signal.SIGWINCH, previous)


def _drain(master: int) -> None:
    """What the process wrote just before it exited."""
    while select.select([master], [], [], 0.1)[0]:
        try:
            data = os.read(master, 65536)
        except OSError:
            return
        if not data:
            return
        os.write(1, data)
