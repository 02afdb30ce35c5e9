"""The embedded DNS server's logic (no root): answers, forwarding decisions, upstream servers,
the container's resolv.conf, and the Forwarder against a fake upstream on the host's loopback."""
import os
import socket
import subprocess
import sys
import threading
import time

import pytest
from dnslib import EDNS0, QTYPE, RCODE, RR, A, DNSRecord

from labkit.engine import dns
from labkit.engine.dns import DnsError, Forwarder, answer, fit_udp, resolv_conf, upstream_servers

NAMES = {"web": ["10.0.0.2", "10.0.1.2"], "db": ["10.0.0.3"], "cache.backend": ["10.0.1.9"]}


def lookup(name):
    return NAMES.get(name, [])


class Forward:
    """A fake upstream: records what it was asked, answers outside.example."""

    def __init__(self, answers=True):
        self.asked, self.answers = [], answers

    def __call__(self, query):
        self.asked.append(query)
        if not self.answers:
            return None
        reply = DNSRecord.parse(query).reply(aa=0)
        reply.add_answer(RR("outside.example", QTYPE.A, rdata=A("192.0.2.7"), ttl=30))
        return bytes(reply.pack())


def ask(name, qtype="A", forward=None):
    query = DNSRecord.question(name, qtype)
    forward = forward or Forward()
    reply = DNSRecord.parse(answer(bytes(query.pack()), lookup, forward))
    assert reply.header.id == query.header.id and reply.header.qr
    return reply


def addresses(reply):
    return sorted(str(rr.rdata) for rr in reply.rr if rr.rtype == QTYPE.A)


# --- answer ------------------------------------------------------------------------------------
def test_a_query_of_a_container_name_gets_all_its_addresses():
    forward = Forward()
    reply = ask("web", forward=forward)
    assert reply.header.rcode == RCODE.NOERROR and reply.header.aa and reply.header.ra
    assert addresses(reply) == ["10.0.0.2", "10.0.1.2"]
    assert {rr.ttl for rr in reply.rr} == {600}
    assert str(reply.q.qname) == "web." and forward.asked == []


@pytest.mark.parametrize("name", ["WEB", "Web.", "wEb", "web."])
def test_names_match_whatever_the_case_and_root_dot(name):
    assert addresses(ask(name)) == ["10.0.0.2", "10.0.1.2"]


def test_multi_label_names_are_looked_up_first():
    assert addresses(ask("Cache.Backend.")) == ["10.0.1.9"]


@pytest.mark.parametrize("qtype", ["AAAA", "MX", "TXT"])
def test_other_types_of_a_known_name_are_empty_noerror_not_forwarded(qtype):
    forward = Forward()
    reply = ask("web", qtype, forward)
    assert reply.header.rcode == RCODE.NOERROR and reply.rr == [] and reply.header.aa
    assert forward.asked == []


def test_unknown_multi_label_names_are_forwarded_as_is():
    forward = Forward()
    query = bytes(DNSRecord.question("outside.example").pack())
    reply_bytes = answer(query, lookup, forward)
    assert forward.asked == [query]
    reply = DNSRecord.parse(reply_bytes)
    assert addresses(reply) == ["192.0.2.7"] and not reply.header.aa  # the upstream's reply, untouched


def test_no_upstream_answer_is_servfail():
    reply = ask("outside.example", forward=Forward(answers=False))
    assert reply.header.rcode == RCODE.SERVFAIL and reply.rr == []


@pytest.mark.parametrize("name", ["nosuch", "NoSuch.", "NOSUCH"])
@pytest.mark.parametrize("qtype", ["A", "AAAA"])
def test_unknown_single_label_is_nxdomain_without_forwarding(name, qtype):
    forward = Forward()
    reply = ask(name, qtype, forward)
    assert reply.header.rcode == RCODE.NXDOMAIN and forward.asked == []


def test_garbage():
    forward = Forward()
    assert answer(b"", lookup, forward) == b""
    assert answer(b"\x12\x34\x01", lookup, forward) == b""  # not even a header
    bad_question = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x3fweb"  # label runs past the end
    reply = DNSRecord.parse(answer(bad_question, lookup, forward))
    assert reply.header.id == 0x1234 and reply.header.rcode == RCODE.FORMERR and reply.header.qr
    no_question = b"\x12\x34\x01\x00" + b"\x00" * 8
    assert DNSRecord.parse(answer(no_question, lookup, forward)).header.rcode == RCODE.FORMERR
    assert forward.asked == []


def test_responses_are_not_answered_and_other_opcodes_are_notimp():
    response = DNSRecord.question("web").reply()
    assert answer(bytes(response.pack()), lookup, Forward()) == b""
    notify = DNSRecord.question("web")
    notify.header.opcode = 4  # NOTIFY
    assert DNSRecord.parse(answer(bytes(notify.pack()), lookup, Forward())).header.rcode == RCODE.NOTIMP


def test_servfail_helper():
    query = DNSRecord.question("web")
    reply = DNSRecord.parse(dns.servfail(bytes(query.pack())))
    assert reply.header.rcode == RCODE.SERVFAIL and reply.header.id == query.header.id
    assert dns.servfail(b"xx") == b""


# --- UDP size ----------------------------------------------------------------------------------
def many_addresses(n):
    return lambda name: [f"10.0.{i // 250}.{i % 250 + 1}" for i in range(n)] if name == "big" else []


def test_long_replies_are_truncated_for_udp():
    query = bytes(DNSRecord.question("big").pack())
    full = answer(query, many_addresses(60), Forward())
    assert len(full) > 512 and len(addresses(DNSRecord.parse(full))) == 60
    cut = DNSRecord.parse(fit_udp(query, full))
    assert cut.header.tc and cut.rr == [] and str(cut.q.qname) == "big." and cut.header.id == DNSRecord.parse(full).header.id
    small = answer(query, many_addresses(2), Forward())
    assert fit_udp(query, small) == small


def test_edns0_allows_longer_udp_replies():
    query = DNSRecord.question("big")
    query.add_ar(EDNS0(udp_len=4096))
    query = bytes(query.pack())
    full = answer(query, many_addresses(60), Forward())
    assert fit_udp(query, full) == full


# --- upstream servers --------------------------------------------------------------------------
def write(tmp_path, text, name="resolv.conf"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_upstream_servers_drop_loopback(tmp_path):
    path = write(tmp_path, "# generated\nsearch example.com\nnameserver 127.0.0.53\nnameserver 10.1.2.3 # office\n"
                           "nameserver ::1\nnameserver 2001:db8::53\n;nameserver 10.9.9.9\nnameserver 127.1.2.3\n"
                           "options edns0\nnameserver 192.0.2.1\n")
    assert upstream_servers(path) == ["10.1.2.3", "2001:db8::53", "192.0.2.1"]


def test_dns_option_servers_replace_the_hosts(tmp_path):
    path = write(tmp_path, "nameserver 10.1.2.3\n")
    assert upstream_servers(path, extra=["192.0.2.53", "127.0.0.1"]) == ["192.0.2.53"]
    assert upstream_servers(path, extra=[]) == ["10.1.2.3"]


def test_no_usable_upstream(tmp_path):
    assert upstream_servers(write(tmp_path, "nameserver 127.0.0.1\n")) == []
    assert upstream_servers(str(tmp_path / "missing")) == []


def test_systemd_resolved_stub_is_followed_to_its_upstreams(tmp_path, monkeypatch):
    monkeypatch.setattr(dns, "SYSTEMD_RESOLV_CONF", write(tmp_path, "nameserver 10.4.4.4\n", "systemd.conf"))
    assert upstream_servers(write(tmp_path, "nameserver 127.0.0.53\noptions edns0 trust-ad\n")) == ["10.4.4.4"]


# --- resolv.conf -------------------------------------------------------------------------------
def test_resolv_conf_on_a_user_defined_network():
    text = resolv_conf(True, ["10.1.2.3"])
    assert text.splitlines()[:2] == ["nameserver 127.0.0.11", "options ndots:0"]
    assert [l for l in text.splitlines() if l.startswith("nameserver")] == ["nameserver 127.0.0.11"]
    text = resolv_conf(True, [], search=["corp.example"], options=["ndots:2", "timeout:1"])
    assert "search corp.example\noptions ndots:2 timeout:1\n" in text and "ndots:0" not in text
    assert resolv_conf(True, [], options=["attempts:2"]).splitlines()[1] == "options ndots:0 attempts:2"


def test_resolv_conf_on_the_default_bridge():
    assert resolv_conf(False, ["10.1.2.3", "10.1.2.4"], search=["a.example", "b.example"]) == (
        "nameserver 10.1.2.3\nnameserver 10.1.2.4\nsearch a.example b.example\n")
    empty = resolv_conf(False, [])
    assert "nameserver" not in empty.replace("# no nameserver", "") and "8.8.8.8" not in empty
    assert empty.startswith("# no nameserver")


# --- Forwarder (a fake upstream on the host's loopback) ---------------------------------------
class Upstream:
    """A UDP DNS server on 127.0.0.1: `behave(query) -> list of datagrams to send back`."""

    def __init__(self, behave):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.behave, self.asked, self.running = behave, [], True
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        while self.running:
            try:
                query, client = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            self.asked.append(query)
            for datagram in self.behave(query):
                self.sock.sendto(datagram, client)

    def close(self):
        self.running = False
        self.thread.join()
        self.sock.close()


@pytest.fixture
def upstreams():
    made = []
    yield lambda behave: made.append(Upstream(behave)) or made[-1]
    for u in made:
        u.close()


def reply_to(query, ip="192.0.2.7", rcode=RCODE.NOERROR, id_delta=0):
    reply = DNSRecord.parse(query).reply(aa=0)
    reply.header.id = (reply.header.id + id_delta) % 65536
    reply.header.rcode = rcode
    if rcode == RCODE.NOERROR:
        reply.add_answer(RR("outside.example", QTYPE.A, rdata=A(ip)))
    return bytes(reply.pack())


def free_udp_port():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


QUERY = bytes(DNSRecord.question("outside.example").pack())


def test_forwarder_relays_the_upstream_reply(upstreams):
    up = upstreams(lambda q: [reply_to(q)])
    reply = Forwarder([up.address])(QUERY)
    assert addresses(DNSRecord.parse(reply)) == ["192.0.2.7"] and up.asked == [QUERY]


def test_forwarder_ignores_replies_with_another_id(upstreams):
    up = upstreams(lambda q: [reply_to(q, "192.0.2.66", id_delta=1), q, reply_to(q)])
    assert addresses(DNSRecord.parse(Forwarder([up.address])(QUERY))) == ["192.0.2.7"]


def test_forwarder_tries_the_next_server(upstreams):
    refused = f"127.0.0.1:{free_udp_port()}"  # nobody listens: ICMP port unreachable, at once
    servfail = upstreams(lambda q: [reply_to(q, rcode=RCODE.SERVFAIL)])
    good = upstreams(lambda q: [reply_to(q, "192.0.2.8")])
    started = time.monotonic()
    reply = Forwarder([refused, servfail.address, good.address])(QUERY)
    assert addresses(DNSRecord.parse(reply)) == ["192.0.2.8"] and time.monotonic() - started < 1
    assert DNSRecord.parse(Forwarder([servfail.address])(QUERY)).header.rcode == RCODE.SERVFAIL


def test_forwarder_gives_up_within_its_timeout(upstreams):
    silent = upstreams(lambda q: [])
    started = time.monotonic()
    assert Forwarder([silent.address, silent.address], timeout=0.4)(QUERY) is None
    assert 0.3 < time.monotonic() - started < 1.0 and len(silent.asked) == 2  # the time is shared
    assert Forwarder([])(QUERY) is None


@pytest.mark.parametrize("bad", ["dns.example", "10.0.0.1:port", "300.1.1.1"])
def test_forwarder_wants_addresses(bad):
    with pytest.raises(DnsError) as err:
        Forwarder([bad])
    assert "IP:PORT" in err.value.hint


def test_forwarder_address_forms():
    assert [dns._parse_server(s) for s in ("10.0.0.1", "10.0.0.1:5353", "2001:db8::1", "[2001:db8::1]:5353")] == [
        (socket.AF_INET, ("10.0.0.1", 53)), (socket.AF_INET, ("10.0.0.1", 5353)),
        (socket.AF_INET6, ("2001:db8::1", 53)), (socket.AF_INET6, ("2001:db8::1", 5353))]


# --- dnslib for `python -S` --------------------------------------------------------------------
def run_without_site(env_extra):
    project = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {k: v for k, v in os.environ.items() if k != dns.DNSLIB_PATH_ENV}
    env.update(PYTHONPATH=project, **env_extra)
    code = ("import sys; from labkit.engine import dns; assert 'dnslib' not in sys.modules\n"
            "try:\n  print(dns.import_dnslib().__name__)\n"
            "except dns.DnsError as e:\n  print('ERR', e.hint)")
    return subprocess.run([sys.executable, "-S", "-c", code], env=env, capture_output=True, text=True, check=True).stdout


def test_import_dnslib_without_site_packages():
    assert run_without_site({}).startswith("ERR install it: `.venv/bin/pip install dnslib`")
    assert run_without_site({dns.DNSLIB_PATH_ENV: dns.dnslib_path()}) == "dnslib\n"
