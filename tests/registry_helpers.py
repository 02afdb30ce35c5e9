"""Helpers for the registry tests: a minimal OCI image built by hand, and small
loopback HTTP servers (a fake Docker-Hub-like registry, a recording/tampering proxy)."""
from __future__ import annotations

import base64
import gzip
import hashlib
import http.client
import http.server
import io
import json
import tarfile
import threading
import urllib.parse
from typing import Any, Callable

from labkit.images.store import Store, digest_bytes

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


def make_layer(files: dict[str, bytes]) -> tuple[bytes, str]:
    """A gzip tar layer (deterministic) and its diff_id (digest of the uncompressed tar)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    tar_bytes = raw.getvalue()
    return gzip.compress(tar_bytes, mtime=0), digest_bytes(tar_bytes)


def make_image(store: Store, layers: list[dict[str, bytes]], tag: str | None = "test:1",
               arch: str = "amd64", variant: str = "") -> dict[str, Any]:
    """Write config, layers and an OCI manifest into `store`; returns the manifest descriptor."""
    descriptors, diff_ids = [], []
    for files in layers:
        blob, diff_id = make_layer(files)
        descriptors.append({"mediaType": OCI_LAYER_GZIP, "digest": store.put_blob(blob), "size": len(blob)})
        diff_ids.append(diff_id)
    config = {"architecture": arch, "os": "linux", "rootfs": {"type": "layers", "diff_ids": diff_ids},
              "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"]}}
    if variant:
        config["variant"] = variant
    config_digest, config_size = store.put_json(config)
    manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": config_size},
                "layers": descriptors}
    digest, size = store.put_json(manifest)
    descriptor = {"mediaType": OCI_MANIFEST, "digest": digest, "size": size}
    if tag:
        store.tag(tag, descriptor)
    return descriptor


def make_index(store: Store, manifests: list[tuple[dict[str, Any], dict[str, str]]],
               tag: str | None = "multi:1") -> dict[str, Any]:
    """An OCI index over (manifest descriptor, platform) pairs."""
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX,
             "manifests": [{**d, "platform": p} for d, p in manifests]}
    digest, size = store.put_json(index)
    descriptor = {"mediaType": OCI_INDEX, "digest": digest, "size": size}
    if tag:
        store.tag(tag, descriptor)
    return descriptor


class _Server:
    """A ThreadingHTTPServer on 127.0.0.1:<free port> in a daemon thread."""

    handler: type[http.server.BaseHTTPRequestHandler]

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        outer = self

        class Handler(self.handler):  # type: ignore[misc,valid-type]
            server_obj = outer

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def record(self, method: str, path: str, headers: Any) -> None:
        with self._lock:
            self.requests.append({"method": method, "path": path, "headers": dict(headers)})

    def count(self, method: str | None = None, contains: str = "") -> int:
        return sum(1 for r in self.requests if (method is None or r["method"] == method) and contains in r["path"])

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _FakeHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_obj: "FakeRegistry"

    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
              content_length: int | None = None, head: bool = False) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body) if content_length is None else content_length))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _error(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        body = json.dumps({"errors": [{"code": code, "message": message, "detail": None}]}).encode()
        self._send(status, body, {"Content-Type": "application/json", **(headers or {})})

    def do_HEAD(self) -> None:  # noqa: N802
        self.do_GET(head=True)

    def do_GET(self, head: bool = False) -> None:  # noqa: N802
        fake = self.server_obj
        fake.record("HEAD" if head else "GET", self.path, self.headers)
        parts = urllib.parse.urlsplit(self.path)
        if parts.path == "/token":
            return fake.token_endpoint(self, urllib.parse.parse_qs(parts.query))
        if fake.rate_limit and fake.rate_limit.pop(0):
            return self._error(429, "TOOMANYREQUESTS", "slow down", {"Retry-After": str(fake.retry_after)})
        if not fake.authorized(self):
            return
        if parts.path == "/v2/":
            return self._send(200, b"{}", {"Docker-Distribution-API-Version": "registry/2.0"})
        path = parts.path[len("/v2/"):]
        if "/manifests/" in path:
            repo, ref = path.split("/manifests/", 1)
            item = fake.manifests.get((repo, ref))
            if item is None:
                if not any(r == repo for r, _ in fake.manifests):
                    return self._error(404, "NAME_UNKNOWN", "repository name not known to registry")
                return self._error(404, "MANIFEST_UNKNOWN", "manifest unknown")
            media_type, data = item
            digest = fake.claimed_digests.get((repo, ref), digest_bytes(data))
            return self._send(200, data, {"Content-Type": media_type, "Docker-Content-Digest": digest}, head=head)
        if "/blobs/" in path:
            repo, digest = path.split("/blobs/", 1)
            if digest in fake.redirect and not head:
                return self._send(307, b"", {"Location": fake.redirect[digest] + self.path})
            data = fake.blobs.get(digest)
            if data is None:
                return self._error(404, "BLOB_UNKNOWN", "blob unknown to registry")
            if digest in fake.tamper:
                data = bytes([data[0] ^ 0xFF]) + data[1:]
            if head:
                return self._send(200, b"", {"Docker-Content-Digest": digest}, content_length=len(data), head=True)
            start = 0
            rng = self.headers.get("Range")
            if rng and fake.honor_range and rng.startswith("bytes=") and rng.endswith("-"):
                start = int(rng[6:-1])
                if start >= len(data):
                    return self._error(416, "RANGE_INVALID", "range not satisfiable")
            body = data[start:]
            headers = {"Content-Type": "application/octet-stream", "Docker-Content-Digest": digest}
            status = 200
            if start:
                status = 206
                headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            cut = fake.drop_after.pop(digest, None)
            if cut is not None:  # promise the whole body, send part of it, hang up
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[:cut])
                self.wfile.flush()
                self.close_connection = True
                return
            return self._send(status, body, headers)
        return self._error(404, "NOT_FOUND", "no such endpoint")


class FakeRegistry(_Server):
    """An in-memory read-only registry on loopback with knobs for misbehaving.

    auth: None, "basic" (users), or "bearer" (a Docker-Hub-like token endpoint at
    /token on the same server, realm announced in WWW-Authenticate).
    """

    handler = _FakeHandler

    def __init__(self, auth: str | None = None, users: dict[str, str] | None = None,
                 service: str = "registry.docker.io") -> None:
        super().__init__()
        self.auth = auth
        self.users = users or {}
        self.service = service
        self.manifests: dict[tuple[str, str], tuple[str, bytes]] = {}
        self.claimed_digests: dict[tuple[str, str], str] = {}
        self.blobs: dict[str, bytes] = {}
        self.tamper: set[str] = set()
        self.drop_after: dict[str, int] = {}
        self.honor_range = True
        self.redirect: dict[str, str] = {}       # digest -> base URL to send blob GETs to
        self.rate_limit: list[bool] = []
        self.retry_after = 0
        self.tokens: dict[str, set[str]] = {}   # token -> scopes it grants
        self.token_requests: list[dict[str, Any]] = []

    def add_blob(self, data: bytes) -> dict[str, Any]:
        digest = digest_bytes(data)
        self.blobs[digest] = data
        return {"digest": digest, "size": len(data)}

    def add_manifest(self, repo: str, refs: list[str], doc: dict[str, Any],
                     media_type: str | None = None) -> dict[str, Any]:
        data = json.dumps(doc, indent=3).encode()  # not canonical on purpose: digests are of the exact bytes
        media_type = media_type or doc.get("mediaType") or OCI_MANIFEST
        digest = digest_bytes(data)
        for ref in [*refs, digest]:
            self.manifests[(repo, ref)] = (media_type, data)
        return {"mediaType": media_type, "digest": digest, "size": len(data)}

    def add_image(self, repo: str, refs: list[str], layers: list[dict[str, bytes]], arch: str = "amd64",
                  variant: str = "", media_types: tuple[str, str, str] = (OCI_MANIFEST, OCI_CONFIG, OCI_LAYER_GZIP)
                  ) -> dict[str, Any]:
        manifest_type, config_type, layer_type = media_types
        layer_descs, diff_ids = [], []
        for files in layers:
            blob, diff_id = make_layer(files)
            layer_descs.append({"mediaType": layer_type, **self.add_blob(blob)})
            diff_ids.append(diff_id)
        config = {"architecture": arch, "os": "linux", "rootfs": {"type": "layers", "diff_ids": diff_ids}}
        if variant:
            config["variant"] = variant
        config_desc = {"mediaType": config_type, **self.add_blob(json.dumps(config).encode())}
        doc = {"schemaVersion": 2, "mediaType": manifest_type, "config": config_desc, "layers": layer_descs}
        return self.add_manifest(repo, refs, doc, manifest_type)

    # --- auth ---
    def authorized(self, h: _FakeHandler) -> bool:
        if self.auth is None:
            return True
        value = h.headers.get("Authorization") or ""
        parts = urllib.parse.urlsplit(h.path)
        if self.auth == "basic":
            ok = False
            if value.startswith("Basic "):
                user, _, pw = base64.b64decode(value[6:]).decode().partition(":")
                ok = self.users.get(user) == pw
            if not ok:
                h._error(401, "UNAUTHORIZED", "authentication required",
                         {"WWW-Authenticate": 'Basic realm="fake-registry"'})
            return ok
        needed = ""
        path = parts.path[len("/v2/"):]
        for marker in ("/manifests/", "/blobs/", "/tags/"):
            if marker in path:
                needed = f"repository:{path.split(marker)[0]}:pull"
        token = value[7:] if value.startswith("Bearer ") else None
        granted = self.tokens.get(token or "", None)
        if granted is not None and (not needed or needed in granted):
            return True
        challenge = f'Bearer realm="{self.url}/token",service="{self.service}"'
        if needed:
            challenge += f',scope="{needed}"'
        h._error(401, "UNAUTHORIZED", "authentication required", {"WWW-Authenticate": challenge})
        return False

    def token_endpoint(self, h: _FakeHandler, query: dict[str, list[str]]) -> None:
        value = h.headers.get("Authorization") or ""
        account = None
        if value.startswith("Basic "):
            user, _, pw = base64.b64decode(value[6:]).decode().partition(":")
            if self.users.get(user) != pw:
                return h._send(401, b'{"details":"incorrect username or password"}')
            account = user
        scopes = set(query.get("scope", []))
        self.token_requests.append({"service": query.get("service", [""])[0], "scopes": sorted(scopes),
                                    "account": account})
        token = "tok-" + hashlib.sha256(repr((len(self.tokens), sorted(scopes))).encode()).hexdigest()[:16]
        self.tokens[token] = scopes
        h._send(200, json.dumps({"token": token, "expires_in": 300}).encode(), {"Content-Type": "application/json"})


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_obj: "RecordingProxy"

    def log_message(self, *args: Any) -> None:
        pass

    def _forward(self) -> None:
        proxy = self.server_obj
        proxy.record(self.command, self.path, self.headers)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        upstream = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=60)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection",)}
        upstream.request(self.command, self.path, body=body, headers=headers)
        resp = upstream.getresponse()
        data = resp.read()
        upstream.close()
        if proxy.mutate is not None and self.command == "GET":
            data = proxy.mutate(self.path, data)
        self.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in ("content-length", "connection", "transfer-encoding"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _forward


class RecordingProxy(_Server):
    """A loopback proxy in front of a registry: records requests, may rewrite GET bodies."""

    handler = _ProxyHandler

    def __init__(self, upstream_port: int, mutate: Callable[[str, bytes], bytes] | None = None) -> None:
        super().__init__()
        self.upstream_port = upstream_port
        self.mutate = mutate
