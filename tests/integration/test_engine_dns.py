"""The embedded DNS server for real: sockets in a network namespace of the test's own (held by a
`sleep`, no mounts), queried from inside it by busybox nslookup, glibc and dnslib, forwarding to
a fake upstream on the host's loopback. No traffic leaves loopback and the lab namespace."""
import os
import select
import subprocess
import sys
import tempfile
import threading
import time

import pytest
from dnslib import QTYPE, RCODE, RR, A, DNSRecord
from dnslib.server import BaseResolver, DNSLogger, DNSServer

from labkit.engine import dns
from labkit.engine.dns import EMBEDDED_DNS, DnsError, Forwarder, Server

pytestmark = pytest.mark.root

NAMES = {"web": ["10.0.0.2", "10.0.1.2"], "db": ["10.0.0.3"], "big": [f"10.0.2.{i}" for i in range(1, 61)]}


def lookup(name):
    return NAMES.get(name, [])


def netns(pid):
    return os.readlink(f"/proc/{pid}/ns/net")


def hold_netns(lo_up=True):
    """A process in a new network namespace (and nothing else new); its pid once it is in there."""
    script = ("ip link set lo up; " if lo_up else "") + "exec sleep 1000"
    holder = subprocess.Popen(["unshare", "--net", "sh", "-c", script])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{holder.pid}/comm") as f:
                if f.read().strip() == "sleep" and netns(holder.pid) != netns("self"):
                    return holder
        except OSError:
            pass
        time.sleep(0.01)
    holder.kill()
    holder.wait()
    raise AssertionError("the namespace holder did not start")


@pytest.fixture
def holder():
    made = []
    yield lambda lo_up=True: made.append(hold_netns(lo_up)) or made[-1]
    for proc in made:  # only the processes this test started, by pid
        proc.kill()
        proc.wait()


class Upstream(BaseResolver):
    """A fake upstream DNS server on the host's loopback: outside.example is 192.0.2.7."""

    def __init__(self):
        self.asked = []
        self.server = DNSServer(self, address="127.0.0.1", port=0, logger=DNSLogger("-request,-reply,-truncated,-error"))
        self.address = f"127.0.0.1:{self.server.server.server_address[1]}"
        self.server.start_thread()

    def resolve(self, request, handler):
        self.asked.append((str(request.q.qname).lower(), QTYPE[request.q.qtype]))
        reply = request.reply(aa=0)
        if str(request.q.qname).lower() == "outside.example." and request.q.qtype == QTYPE.A:
            reply.add_answer(RR(request.q.qname, QTYPE.A, rdata=A("192.0.2.7"), ttl=30))
        else:
            reply.header.rcode = RCODE.NXDOMAIN
        return reply

    def stop(self):
        self.server.stop()
        self.server.server.server_close()


@pytest.fixture
def upstream():
    up = Upstream()
    yield up
    up.stop()


class Loop:
    """The monitor's part: a poll loop over the server's fds, in a thread of the test."""

    def __init__(self, server):
        self.server, self.stop = server, threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        poller = select.poll()
        for fd in self.server.fds():
            poller.register(fd, select.POLLIN)
        while not self.stop.is_set():
            for fd, _ in poller.poll(100):
                self.server.on_ready(fd)

    def close(self):
        self.stop.set()
        self.thread.join()
        self.server.close()


@pytest.fixture
def serving(holder, upstream):
    """serving() -> the pid whose netns has 127.0.0.11 answering from NAMES and forwarding upstream."""
    loops = []

    def start(lo_up=True):
        pid = holder(lo_up).pid
        loops.append(Loop(Server(pid, lookup, Forwarder([upstream.address]))))
        return pid

    yield start
    for loop in loops:
        loop.close()


def inside(pid, *argv, **kwargs):
    return subprocess.run(["nsenter", f"--net=/proc/{pid}/ns/net", *argv], capture_output=True, text=True,
                          timeout=30, **kwargs)


def nslookup(pid, name):
    return inside(pid, "/bin/busybox", "nslookup", name, EMBEDDED_DNS)


def python_inside(pid, code):
    """Python in the namespace, with /etc/resolv.conf = the container's (nameserver 127.0.0.11):
    bind-mounted in a throwaway private mount namespace, never in ours."""
    with tempfile.NamedTemporaryFile("w", prefix="labkit-test-resolv-", suffix=".conf") as conf:
        conf.write(dns.resolv_conf(True, []))
        conf.flush()
        script = (f'mount --bind "$1" /etc/resolv.conf && exec nsenter --net=/proc/{pid}/ns/net '
                  f'"$2" -c "$3"')
        return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
                               conf.name, sys.executable, code], capture_output=True, text=True, timeout=30)


def dnslib_inside(pid, name, qtype="A", tcp=False):
    code = (f"import sys; from dnslib import DNSRecord; q = DNSRecord.question({name!r}, {qtype!r})\n"
            f"sys.stdout.buffer.write(q.send({EMBEDDED_DNS!r}, 53, tcp={tcp}, timeout=5))")
    out = subprocess.run(["nsenter", f"--net=/proc/{pid}/ns/net", sys.executable, "-c", code],
                         capture_output=True, timeout=30, check=True).stdout
    return DNSRecord.parse(out)


def test_busybox_nslookup_finds_containers_by_name(serving, upstream):
    pid = serving()
    out = nslookup(pid, "web")
    assert "Address: 10.0.0.2" in out.stdout and "Address: 10.0.1.2" in out.stdout, out
    assert "Address: 10.0.0.3" in nslookup(pid, "DB").stdout
    missing = nslookup(pid, "nosuch")
    assert missing.returncode != 0 and "NXDOMAIN" in missing.stdout + missing.stderr
    # busybox asked A and AAAA: neither name went upstream
    assert not [q for q in upstream.asked if q[0] in ("web.", "db.", "nosuch.")]


def test_glibc_resolves_through_127_0_0_11(serving):
    pid = serving()
    out = python_inside(pid, "import socket\n"
                             "print(socket.gethostbyname('web'))\n"
                             "print(sorted({a[4][0] for a in socket.getaddrinfo('WEB.', 80)}))\n"
                             "try:\n socket.gethostbyname('nosuch')\n"
                             "except socket.gaierror as e:\n print('gaierror', e.errno == socket.EAI_NONAME)")
    assert out.returncode == 0, out.stderr
    first, every, missing = out.stdout.splitlines()
    assert first in NAMES["web"] and every == str(NAMES["web"]) and missing == "gaierror True"


def test_other_names_are_forwarded_to_the_upstream(serving, upstream):
    pid = serving()
    out = nslookup(pid, "outside.example")
    assert "Address: 192.0.2.7" in out.stdout, out
    assert ("outside.example.", "A") in upstream.asked
    assert "NXDOMAIN" in nslookup(pid, "elsewhere.example").stdout + nslookup(pid, "elsewhere.example").stderr


def test_tcp_and_truncation(serving):
    pid = serving()
    assert sorted(str(rr.rdata) for rr in dnslib_inside(pid, "web", tcp=True).rr) == NAMES["web"]
    udp = dnslib_inside(pid, "big")
    assert udp.header.tc and udp.rr == []
    tcp = dnslib_inside(pid, "big", tcp=True)
    assert len(tcp.rr) == 60 and not tcp.header.tc
    assert dnslib_inside(pid, "outside.example", tcp=True).rr[0].rdata == A("192.0.2.7")


def test_garbage_does_not_stop_the_server(serving):
    pid = serving()
    code = ("import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            f"s.sendto(b'\\x00', ({EMBEDDED_DNS!r}, 53)); s.sendto(b'x' * 40, ({EMBEDDED_DNS!r}, 53))\n"
            f"t = socket.create_connection(({EMBEDDED_DNS!r}, 53)); t.sendall(b'\\x00\\x05ab'); t.close()")
    assert inside(pid, sys.executable, "-c", code).returncode == 0
    assert dnslib_inside(pid, "db").rr[0].rdata == A("10.0.0.3")


def test_lo_must_be_up_first(holder):
    pid = holder(lo_up=False).pid
    with pytest.raises(DnsError) as down:
        Server(pid, lookup, lambda q: None)
    assert "lo up" in down.value.hint


def test_the_caller_stays_in_its_netns_and_errors_have_hints(holder):
    ours = netns("thread-self")
    pid = holder().pid
    with Server(pid, lookup, lambda q: None) as server:
        assert netns("thread-self") == ours
        assert all(os.get_blocking(fd) is False for fd in server.fds())
        with pytest.raises(DnsError) as busy:
            Server(pid, lookup, lambda q: None)
        assert "already listens" in busy.value.hint and netns("thread-self") == ours
    with pytest.raises(DnsError) as gone:
        Server(2**22 + 7, lookup, lambda q: None)
    assert "exited" in gone.value.hint and netns("thread-self") == ours
