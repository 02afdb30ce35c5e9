"""Chapter 05 exercise: fetch a blob by hand, and trust it only if it matches its digest.

The learner writes `fetch_blob(registry_url, repo, digest)` with http.client:
GET /v2/<repo>/blobs/<digest> from the registry at `registry_url`
("http://127.0.0.1:PORT") and return the body as bytes, only if the bytes
hash to `digest`; otherwise raise (or return None).

The check pushes fresh random blobs into the live registry, then calls the
learner's function through two small proxies on 127.0.0.1 that it starts
and stops itself:

- an honest one: the function must return exactly the blob, and its GET must
  reach the URL it was given (not another server, not a cache);
- a tampering one, which flips one byte of every blob body and leaves every
  header alone (Content-Length, Docker-Content-Digest): the function must
  refuse it — a registry's header is only a claim;
- a digest the registry does not have (HTTP 404 BLOB_UNKNOWN): the function
  must not return the error body as if it were the blob.

Nothing but 127.0.0.1 is ever contacted: a registry elsewhere is refused
before any connection.
"""
from __future__ import annotations

import http.client
import http.server
import io
import os
import threading
import urllib.parse
from typing import Any, Callable

from ..errors import LabkitError
from ..images.store import digest_bytes
from ..registry.client import RegistryClient
from ..registry.transport import is_loopback
from . import Verdict, failed, passed

FetchBlob = Callable[[str, str, str], Any]
REPOSITORY = "lab/exercise"
HASH_HINT = ("hash the bytes you received yourself — hashlib.sha256(body).hexdigest() — and compare with "
             "the part of the digest after 'sha256:'; raise ValueError if they differ. The registry's "
             "Docker-Content-Digest header is only its claim: whoever changed the body can leave it alone")
URL_HINT = ("connect to the host and port of registry_url (urllib.parse.urlsplit(registry_url) gives "
            ".hostname and .port): the check passes a different server each time")


# --- the registry under test ------------------------------------------------------------------------
def _loopback_port(registry: Any) -> int | Verdict:
    """The port of a loopback registry: a LocalRegistry, "127.0.0.1:PORT" or "http://127.0.0.1:PORT"."""
    port = getattr(registry, "port", None)
    host = "127.0.0.1" if port is not None else None
    if port is None and isinstance(registry, str):
        parts = urllib.parse.urlsplit(registry if "://" in registry else "http://" + registry)
        try:
            host, port = parts.hostname, parts.port
        except ValueError:
            host, port = None, None
    if not port or not is_loopback(host):
        return failed(f"the check talks only to a registry on 127.0.0.1, not {registry!r}",
                      "pass the LocalRegistry this notebook started (e.g. `reg`)")
    return int(port)


def _push(port: int, data: bytes) -> str:
    """Put `data` into the registry as a blob of REPOSITORY (monolithic upload); its digest."""
    digest = digest_bytes(data)
    client = RegistryClient(f"127.0.0.1:{port}")
    try:
        client.upload_blob(REPOSITORY, digest, len(data), io.BytesIO(data))
    finally:
        client.close()
    return digest


# --- a proxy on loopback that may tamper with blob bodies ----------------------------------------------
class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    proxy: "Proxy"

    def log_message(self, *args: Any) -> None:
        pass

    def _forward(self) -> None:
        proxy = self.proxy
        with proxy.lock:
            proxy.requests.append((self.command, urllib.parse.urlsplit(self.path).path))
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "host")}
        upstream = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=30)
        try:
            upstream.request(self.command, self.path, body=body, headers=headers)
            response = upstream.getresponse()
            data = response.read()
        finally:
            upstream.close()
        if proxy.tamper and self.command == "GET" and "/blobs/" in self.path and response.status == 200 and data:
            data = bytes([data[0] ^ 0xFF]) + data[1:]  # one byte flipped; length and headers unchanged
        self.send_response(response.status)
        for key, value in response.getheaders():
            if key.lower() not in ("content-length", "connection", "transfer-encoding"):
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _forward


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hangs up early (the learner's code) is not the proxy's problem


class Proxy:
    """An HTTP proxy on 127.0.0.1:<free port> in front of a loopback registry; records requests."""

    def __init__(self, upstream_port: int, tamper: bool = False) -> None:
        self.upstream_port = upstream_port
        self.tamper = tamper
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        handler = type("Handler", (_ProxyHandler,), {"proxy": self})
        self.server = _Server(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def got(self, path: str) -> bool:
        return any(method == "GET" and seen == path for method, seen in self.requests)

    def __enter__(self) -> "Proxy":
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()


# --- calling the learner's function ----------------------------------------------------------------------
class _Outcome:
    def __init__(self) -> None:
        self.value: Any = None
        self.error: BaseException | None = None
        self.finished = False


def _call(fetch_blob: FetchBlob, url: str, digest: str, timeout: float) -> _Outcome:
    """Run fetch_blob(url, REPOSITORY, digest) in a thread, so a hang cannot stall the notebook."""
    outcome = _Outcome()

    def run() -> None:
        try:
            outcome.value = fetch_blob(url, REPOSITORY, digest)
        except Exception as err:  # the learner's code: report, don't crash
            outcome.error = err
        outcome.finished = True

    thread = threading.Thread(target=run, daemon=True, name="labkit-check-ch05")
    thread.start()
    thread.join(timeout)
    return outcome


def _hang(timeout: float) -> Verdict:
    return failed(f"your function did not return within {timeout:.0f} s",
                  "give http.client.HTTPConnection a timeout (e.g. timeout=10), read the whole response "
                  "with response.read(), and close the connection")


def _show(value: Any) -> str:
    return f"{len(value)} bytes" if isinstance(value, (bytes, bytearray)) else type(value).__name__


def fetch_blob_verified(fetch_blob: FetchBlob, registry: Any, timeout: float = 30.0) -> Verdict:
    """Check `fetch_blob(registry_url, repo, digest)` against the live loopback `registry`."""
    port = _loopback_port(registry)
    if isinstance(port, Verdict):
        return port
    if not callable(fetch_blob):
        return failed(f"expected a function, got a {type(fetch_blob).__name__}",
                      "define `def fetch_blob(registry_url, repo, digest):` and pass the function itself")
    good = b"labkit ch05: a good blob\n" + os.urandom(48 << 10)
    tampered = b"labkit ch05: a blob to tamper with\n" + os.urandom(48 << 10)
    try:
        good_digest, tampered_digest = _push(port, good), _push(port, tampered)
    except LabkitError as err:
        return failed(f"the check could not push its blobs to the registry: {err.what}",
                      err.hint or "is the registry still running? (reg.running)")
    missing_digest = digest_bytes(b"labkit ch05: never pushed\n" + os.urandom(32))
    blob_path = f"/v2/{REPOSITORY}/blobs/"

    with Proxy(port) as honest, Proxy(port, tamper=True) as tampering:
        # 1. a good blob comes back, whole, from the URL given
        outcome = _call(fetch_blob, honest.url, good_digest, timeout)
        if not outcome.finished:
            return _hang(timeout)
        if outcome.error is not None:
            return failed(f"for a good blob your function raised {type(outcome.error).__name__}: {outcome.error}",
                          f"GET /v2/<repo>/blobs/<digest> answers 200 with the blob; {URL_HINT}")
        if not honest.got(blob_path + good_digest):
            return failed("no GET /v2/<repo>/blobs/<digest> reached the registry_url your function was given",
                          URL_HINT)
        if not isinstance(outcome.value, (bytes, bytearray)):
            return failed(f"for a good blob your function returned {_show(outcome.value)}, not the blob's bytes",
                          "return the body itself: response.read() gives bytes (don't decode it or return "
                          "the response object)")
        if bytes(outcome.value) != good:
            return failed(f"for a good blob your function returned {_show(outcome.value)}, "
                          f"not the {len(good)} bytes the registry holds",
                          "return the whole body of GET /v2/<repo>/blobs/<digest>: read it all, with "
                          "response.read(), before closing the connection")

        # 2. a blob changed in transit is refused
        outcome = _call(fetch_blob, tampering.url, tampered_digest, timeout)
        if not outcome.finished:
            return _hang(timeout)
        if not tampering.got(blob_path + tampered_digest):
            if outcome.error is None and outcome.value is not None:
                return failed("your function answered without a GET /v2/<repo>/blobs/<digest> to the "
                              "registry_url it was given", URL_HINT)
            return failed("your function refused a blob without even fetching it from the registry_url "
                          "it was given", URL_HINT)
        if outcome.error is None and outcome.value is not None:
            return failed(f"a blob with one byte changed in transit (headers untouched) was accepted: your "
                          f"function returned {_show(outcome.value)}", HASH_HINT)

        # 3. a blob the registry does not have is not "returned"
        outcome = _call(fetch_blob, honest.url, missing_digest, timeout)
        if not outcome.finished:
            return _hang(timeout)
        if outcome.error is None and outcome.value is not None:
            return failed(f"for a digest the registry does not have (HTTP 404 BLOB_UNKNOWN) your function "
                          f"returned {_show(outcome.value)}",
                          "check response.status == 200 before using the body: the body of a 404 is a JSON "
                          "error, not the blob — and it does not hash to the digest either")
    return passed(f"returned a good blob ({len(good) >> 10} KiB, its sha256 checked); refused the same kind of "
                  "blob with one byte flipped in transit (headers untouched) and a digest the registry "
                  "does not have")
