"""Docker's embedded DNS server: 127.0.0.11 inside each container on a user-defined network.

A container on a user-defined network gets /etc/resolv.conf `nameserver 127.0.0.11`.
A resolver listening on 127.0.0.11:53 *in the container's network namespace*
  - answers the names and aliases of the containers on the networks this container
    is attached to (and only those): A records, TTL 600, authoritative;
  - answers a known name asked for another type (AAAA, MX, ...) with NOERROR and no
    records, never forwarding it: else a resolver would ask the internet for `web`;
  - answers an unknown single-label name with NXDOMAIN itself, as Docker does;
  - forwards every other query, as is, to the upstream servers (the host's
    non-loopback nameservers, or the container's --dns ones) and relays the reply.

In labkit the container's monitor owns the server (`Server`): a socket belongs to the
network namespace it was created in, so the monitor setns()es into the container's
netns just long enough to create and bind its sockets, then returns to its own. It
then serves them from its poll loop, and forwards from its own netns (the host's).

dnslib (a DNS wire-format library) is imported lazily: the monitor runs as
`python -S` without site-packages, see `import_dnslib`.
"""
from __future__ import annotations

import errno
import ipaddress
import os
import select
import socket
import struct
import sys
import time
from collections.abc import Callable
from types import ModuleType

from .. import sys as lsys
from ..errors import LabkitError

EMBEDDED_DNS = "127.0.0.11"
TTL = 600  # Docker's TTL for container names
UDP_LIMIT = 512  # a reply over UDP without EDNS0 must fit in 512 bytes (RFC 1035)
TCP_READ_SECONDS = 1.0  # a TCP client must send its query within this, or is dropped
TCP_QUERIES_PER_CONN = 16
DNSLIB_PATH_ENV = "LABKIT_DNSLIB_PATH"
SYSTEMD_STUB = "127.0.0.53"  # systemd-resolved's stub: Docker then reads the file below instead
SYSTEMD_RESOLV_CONF = "/run/systemd/resolve/resolv.conf"

Lookup = Callable[[str], list[str]]
Forward = Callable[[bytes], "bytes | None"]


class DnsError(LabkitError):
    """The embedded DNS server could not be set up."""


# --- dnslib ------------------------------------------------------------------------------
def import_dnslib() -> ModuleType:
    """dnslib, also where site-packages is not on sys.path (the monitor runs `python -S`):
    then from the directory that LABKIT_DNSLIB_PATH names (see `dnslib_path`)."""
    try:
        import dnslib
        return dnslib
    except ImportError:
        pass
    extra = os.environ.get(DNSLIB_PATH_ENV)
    if extra and os.path.isdir(extra):
        if extra not in sys.path:
            sys.path.append(extra)  # appended: it must not shadow the standard library
        try:
            import dnslib
            return dnslib
        except ImportError:
            pass
    raise DnsError("the embedded DNS server needs the Python package dnslib, which is not importable"
                   + (f" (not in {DNSLIB_PATH_ENV}={extra})" if extra else ""),
                   hint="install it: `.venv/bin/pip install dnslib` (or `./lab.sh setup`); a process started "
                        f"with `python -S` finds it through {DNSLIB_PATH_ENV}=<its site-packages dir>")


def dnslib_path() -> str | None:
    """The directory that holds dnslib in this process: the value of LABKIT_DNSLIB_PATH for a
    `python -S` child (the monitor). None if dnslib is not importable here."""
    try:
        dnslib = import_dnslib()
    except DnsError:
        return None
    return os.path.dirname(os.path.dirname(os.path.abspath(dnslib.__file__)))


# --- answering ---------------------------------------------------------------------------
def answer(query: bytes, lookup: Lookup, forward: Forward) -> bytes:
    """The reply to one DNS message `query` (b"" if it deserves none)."""
    dnslib = import_dnslib()
    try:
        request = dnslib.DNSRecord.parse(query)
    except Exception:  # dnslib raises DNSError, but a hostile packet may find others
        return _header_only_reply(dnslib, query, dnslib.RCODE.FORMERR)
    if request.header.qr:  # a response, not a query: answering it could start a loop
        return b""
    if request.header.opcode != dnslib.OPCODE.QUERY:
        return bytes(_reply(request, dnslib.RCODE.NOTIMP).pack())
    if len(request.questions) != 1:  # every real resolver asks one question per message
        return bytes(_reply(request, dnslib.RCODE.FORMERR).pack())
    question = request.questions[0]
    name = _name(question.qname)
    addresses = lookup(name)
    if addresses:
        reply = _reply(request, dnslib.RCODE.NOERROR)
        if question.qtype == dnslib.QTYPE.A:
            for address in addresses:
                reply.add_answer(dnslib.RR(question.qname, dnslib.QTYPE.A, rdata=dnslib.A(address), ttl=TTL))
        return bytes(reply.pack())  # other types of a known name: NOERROR, no records (Docker's NODATA)
    if name and "." not in name:  # `web` is nobody's: the internet has no answer for it either
        return bytes(_reply(request, dnslib.RCODE.NXDOMAIN).pack())
    reply_bytes = forward(query)
    if reply_bytes is None:
        return bytes(_reply(request, dnslib.RCODE.SERVFAIL).pack())
    return reply_bytes


def _name(qname: object) -> str:
    # DNS names are case-insensitive; the lookup gets them lower-case, without the root dot
    return str(qname).rstrip(".").lower()


def _reply(request, rcode: int):
    """An empty reply (a dnslib DNSRecord) to `request`: the question, AA and RA set, `rcode`."""
    reply = request.reply(ra=1, aa=1)
    reply.header.rcode = rcode
    return reply


def servfail(query: bytes) -> bytes:
    """SERVFAIL for `query` (b"" if even its header does not parse): what a client gets when
    answering failed on our side."""
    dnslib = import_dnslib()
    try:
        return bytes(_reply(dnslib.DNSRecord.parse(query), dnslib.RCODE.SERVFAIL).pack())
    except Exception:
        return _header_only_reply(dnslib, query, dnslib.RCODE.SERVFAIL)


def _header_only_reply(dnslib: ModuleType, query: bytes, rcode: int) -> bytes:
    """A reply of just a header (the query's id and opcode kept) with `rcode`, if the query's
    header parses; else b"" (nothing to answer to)."""
    try:
        header = dnslib.DNSHeader.parse(dnslib.DNSBuffer(query))
    except Exception:
        return b""
    if header.qr:
        return b""
    reply = dnslib.DNSHeader(id=header.id, bitmap=header.bitmap, qr=1, aa=1, ra=1)
    reply.rcode = rcode
    reply.q = reply.a = reply.auth = reply.ar = 0
    return bytes(dnslib.DNSRecord(reply).pack())


def fit_udp(query: bytes, reply: bytes) -> bytes:
    """`reply` cut to the header and question with TC set if it is too long for UDP: 512 bytes,
    or what the query's EDNS0 record allows. The client then asks again over TCP."""
    if len(reply) <= UDP_LIMIT:
        return reply
    dnslib = import_dnslib()
    try:
        request = dnslib.DNSRecord.parse(query)
        limit = max([UDP_LIMIT] + [rr.rclass for rr in request.ar if rr.rtype == dnslib.QTYPE.OPT])
        if len(reply) <= limit:
            return reply
        cut = dnslib.DNSRecord.parse(reply)
    except Exception:
        return reply
    cut.rr, cut.auth, cut.ar = [], [], []
    cut.header.tc = 1
    cut.set_header_qa()
    return bytes(cut.pack())


# --- upstream servers ----------------------------------------------------------------------
def _nameservers(path: str) -> list[str]:
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        words = line.split("#", 1)[0].split(";", 1)[0].split()
        if len(words) >= 2 and words[0] == "nameserver":
            found.append(words[1])
    return found


def _is_loopback(server: str) -> bool:
    try:
        return ipaddress.ip_address(server.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def upstream_servers(resolv_conf: str = "/etc/resolv.conf", extra: list[str] | None = None) -> list[str]:
    """Where the embedded server forwards to: the --dns servers if given, else the nameservers of
    the host's resolv.conf; loopback ones dropped (the host's own resolver is not the container's
    127.0.0.1), as Docker drops them. May be empty: then forwarding answers SERVFAIL."""
    if extra:
        servers = list(extra)
    else:
        servers = _nameservers(resolv_conf)
        if servers and set(servers) == {SYSTEMD_STUB}:
            servers = _nameservers(SYSTEMD_RESOLV_CONF)  # the stub's own upstreams, as Docker does
    return [s for s in servers if not _is_loopback(s)]


def _parse_server(server: str) -> tuple[socket.AddressFamily, tuple[str, int]]:
    """"IP", "IP:PORT", "[IPv6]:PORT" or a bare IPv6 address -> (family, address)."""
    host, port = server, 53
    if server.startswith("["):
        host, _, rest = server[1:].partition("]")
        port = int(rest[1:]) if rest.startswith(":") else 53
    elif server.count(":") == 1:
        host, _, port_text = server.partition(":")
        port = int(port_text)
    ip = ipaddress.ip_address(host)
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    return family, (str(ip), port)


class Forwarder:
    """forward(query) -> the first upstream's reply over UDP, or None if none answers in
    `timeout` seconds (all servers together). Runs in the caller's netns: the host's."""

    def __init__(self, servers: list[str], timeout: float = 2.0) -> None:
        try:
            self.servers = [_parse_server(s) for s in servers]
        except ValueError as err:
            raise DnsError(f"bad upstream DNS server in {servers}: {err}",
                           hint='give IP addresses, as "IP" or "IP:PORT" (e.g. --dns 192.0.2.53)') from None
        self.timeout = timeout

    def __call__(self, query: bytes) -> bytes | None:
        deadline = time.monotonic() + self.timeout
        failed: bytes | None = None
        for index, (family, address) in enumerate(self.servers):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            reply = self._ask(family, address, query, left / (len(self.servers) - index))
            if reply is None:
                continue
            if reply[3] & 0x0F == 2:  # SERVFAIL: another server may do better (as Docker)
                failed = reply
                continue
            return reply
        return failed

    @staticmethod
    def _ask(family: socket.AddressFamily, address: tuple[str, int], query: bytes, timeout: float) -> bytes | None:
        deadline = time.monotonic() + timeout
        # a new socket (a new random source port) per query; connect() makes the kernel
        # drop datagrams from anyone but this server
        with socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            try:
                sock.connect(address)
                sock.send(query)
                while (left := deadline - time.monotonic()) > 0:
                    sock.settimeout(left)
                    reply = sock.recv(65535)
                    if len(reply) >= 12 and reply[:2] == query[:2] and reply[2] & 0x80:
                        return reply  # same id, and a response: ours
            except OSError:  # timeout, ICMP port unreachable (ECONNREFUSED), no route
                return None
        return None


# --- the server ----------------------------------------------------------------------------
class Server:
    """UDP and TCP sockets on address:port in the network namespace of process `netns_pid`,
    served from the caller's poll loop: poll `fds()` for POLLIN, call `on_ready(fd)`."""

    def __init__(self, netns_pid: int, lookup: Lookup, forward: Forward,
                 address: str = EMBEDDED_DNS, port: int = 53) -> None:
        import_dnslib()  # fail now, with the hint, not at the first query
        self.lookup, self.forward = lookup, forward
        self.udp, self.tcp = _sockets_in_netns(netns_pid, address, port)

    def fds(self) -> list[int]:
        return [self.udp.fileno(), self.tcp.fileno()]

    def on_ready(self, fd: int) -> None:
        """Serve what woke the poll: one UDP query, or one TCP connection. Never raises: a bad
        query must not end the monitor."""
        try:
            if fd == self.udp.fileno():
                self._serve_udp()
            elif fd == self.tcp.fileno():
                self._serve_tcp()
        except Exception as err:  # noqa: BLE001 — logged, the loop goes on
            print(f"labkit dns: {type(err).__name__}: {err}", file=sys.stderr)

    def close(self) -> None:
        self.udp.close()
        self.tcp.close()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _answer(self, query: bytes) -> bytes:
        try:
            return answer(query, self.lookup, self.forward)
        except Exception as err:  # noqa: BLE001 — a failing lookup: the client gets SERVFAIL
            print(f"labkit dns: answering: {type(err).__name__}: {err}", file=sys.stderr)
            return servfail(query)

    def _serve_udp(self) -> None:
        try:
            query, client = self.udp.recvfrom(65535)
        except BlockingIOError:  # another reader took it
            return
        reply = self._answer(query)
        if reply:
            self.udp.sendto(fit_udp(query, reply), client)

    def _serve_tcp(self) -> None:
        try:
            conn, _ = self.tcp.accept()
        except BlockingIOError:
            return
        with conn:
            conn.settimeout(TCP_READ_SECONDS)  # a short blocking read: the monitor waits at most this
            for _ in range(TCP_QUERIES_PER_CONN):
                query = _read_tcp_message(conn)
                if query is None:
                    return
                reply = self._answer(query)
                if not reply:
                    return
                conn.sendall(struct.pack("!H", len(reply)) + reply)
                # glibc writes its A and AAAA queries together: serve the next one if it is
                # there already, but never wait for one
                if not _readable(conn):
                    return


def _readable(conn: socket.socket) -> bool:
    poller = select.poll()  # not select(): a monitor's fds may be above FD_SETSIZE
    poller.register(conn, select.POLLIN)
    return bool(poller.poll(0))


def _read_exactly(conn: socket.socket, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def _read_tcp_message(conn: socket.socket) -> bytes | None:
    """One DNS message over TCP (a 2-byte big-endian length, then the message); None at EOF."""
    try:
        prefix = _read_exactly(conn, 2)
        return _read_exactly(conn, struct.unpack("!H", prefix)[0]) if prefix else None
    except OSError:  # timeout or reset
        return None


def _sockets_in_netns(pid: int, address: str, port: int) -> tuple[socket.socket, socket.socket]:
    """A UDP and a listening TCP socket bound in `pid`'s netns. They stay in the netns they were
    created in, whatever netns their owner is in later."""
    from .. import net as knet

    try:
        return knet.run_in_netns(pid, _bind, address, port)
    except knet.NetError as err:
        raise DnsError(err.what, hint=err.hint) from None


def _bind(address: str, port: int) -> tuple[socket.socket, socket.socket]:
    flags = socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM | flags)
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM | flags)
    try:
        if ipaddress.ip_address(address).is_loopback and not lsys.link_is_up("lo"):  # in the target netns now
            # bound now, 127.0.0.11 would pass for a broadcast address and replies would leave
            # from 127.0.0.1, which the client's connected socket drops
            raise OSError(errno.EADDRNOTAVAIL, "the loopback interface is down")
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        udp.bind((address, port))
        tcp.bind((address, port))
        tcp.listen(16)
    except OSError as err:
        udp.close()
        tcp.close()
        if err.errno == errno.EADDRNOTAVAIL:
            hint = "bring the container's loopback up first (`ip link set lo up` in its netns): 127.0.0.0/8 lives on lo"
        elif err.errno == errno.EADDRINUSE:
            hint = "another DNS server already listens there: one embedded server per container"
        else:
            hint = "binding port 53 needs root (CAP_NET_BIND_SERVICE)"
        raise DnsError(f"cannot listen on {address}:{port} in the container's network namespace: {err.strerror}",
                       hint=hint) from None
    return udp, tcp


# --- /etc/resolv.conf ------------------------------------------------------------------------
def resolv_conf(embedded: bool, servers: list[str], search: list[str] | None = None,
                options: list[str] | None = None) -> str:
    """The container's /etc/resolv.conf. On a user-defined network (`embedded`) it names only
    127.0.0.11, with ndots:0 as Docker writes it (a dotted or not name is asked as is first);
    on the default bridge, the given (host's non-loopback) servers."""
    lines = []
    if embedded:
        lines.append(f"nameserver {EMBEDDED_DNS}")
    else:
        lines += [f"nameserver {server}" for server in servers]
        if not servers:  # Docker would fall back to 8.8.8.8 and 8.8.4.4; labkit asks no one
            lines.append("# no nameserver: the host has no non-loopback one and no --dns was given")
    if search:
        lines.append("search " + " ".join(search))
    opts = list(options or [])
    if embedded and not any(o.startswith("ndots:") for o in opts):  # --dns-option ndots:N wins
        opts.insert(0, "ndots:0")
    if opts:
        lines.append("options " + " ".join(opts))
    if embedded:
        lines.append(f"# the embedded server forwards other names to: {', '.join(servers) or 'no one'}")
    return "\n".join(lines) + "\n"
