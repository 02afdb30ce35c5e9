"""A real registry on loopback for tests and chapter 05: Debian's `docker-registry`
(CNCF distribution), started with a config labkit writes, stopped by PID.

    with LocalRegistry() as reg:                          # open, plain HTTP on 127.0.0.1:<free port>
        push(store, "hello:1.0", reg.reference("demo/hello:1.0"))
    with LocalRegistry(users={"alice": "secret"}) as reg:  # htpasswd (bcrypt) basic auth
        ...
    with TokenServer(users={"alice": "secret"}) as ts, LocalRegistry(token=ts) as reg:
        ...                                                # the Bearer token flow, as Docker Hub does it

Its storage and config live in a temp dir named labkit-registry-*, removed on
stop; `labkit doctor --leaks` finds a registry process left running.
`labkit registry start` (labkit.registry.service) runs the same binary with the
same config (registry_config, spawn_registry, wait_answering), detached and
persistent instead.
"""
from __future__ import annotations

import atexit
import base64
import hashlib
import http.client
import http.server
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.parse
import warnings
from typing import Any, Callable, Mapping

from ..errors import LabkitError

BINARIES = ("docker-registry", "registry")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_registry_binary() -> str | None:
    for name in BINARIES:
        path = shutil.which(name)
        if path:
            return path
    return None


def bcrypt_hash(password: str) -> str:
    """A bcrypt hash for htpasswd (the registry accepts only bcrypt). Low cost: a loopback lab."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            import crypt  # removed in Python 3.13
        hashed = crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16))
        if hashed and hashed.startswith("$2"):
            return hashed
    except (ImportError, AttributeError, ValueError, OSError):
        pass
    try:
        import bcrypt  # type: ignore[import-not-found]
        return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
    except ImportError:
        pass
    if shutil.which("htpasswd"):
        out = subprocess.run(["htpasswd", "-nbBC", "4", "x", password], capture_output=True, text=True, check=True)
        return out.stdout.strip().split(":", 1)[1]
    raise LabkitError("cannot make a bcrypt hash for the registry's htpasswd file",
                      "install one of: `pip install bcrypt`, or `apt-get install apache2-utils` (htpasswd)")


def registry_config(storage: str, port: int, log_level: str = "warn",
                    auth: dict[str, Any] | None = None) -> dict[str, Any]:
    """A docker-registry config: filesystem storage at `storage`, plain HTTP on 127.0.0.1:`port`
    only (never all interfaces), deletes allowed, optional `auth` section (htpasswd or token)."""
    config: dict[str, Any] = {
        "version": 0.1,
        "log": {"level": log_level, "accesslog": {"disabled": True}},
        "storage": {"filesystem": {"rootdirectory": storage}, "delete": {"enabled": True},
                    "maintenance": {"uploadpurging": {"enabled": False}}},
        "http": {"addr": f"127.0.0.1:{port}", "secret": secrets.token_hex(16),
                 "headers": {"X-Content-Type-Options": ["nosniff"]}},
        "health": {"storagedriver": {"enabled": False}},
    }
    if auth:
        config["auth"] = auth
    return config


def write_config(path: str, config: dict[str, Any]) -> None:
    """Write a registry config (YAML is a superset of JSON, so it is written as JSON)."""
    with open(path, "w") as f:
        json.dump(config, f, indent=2)


def spawn_registry(binary: str, config_path: str, log_path: str) -> subprocess.Popen:
    """`docker-registry serve CONFIG` in its own session (no signal from our terminal reaches
    it), output appended to `log_path`."""
    with open(log_path, "ab") as log:
        return subprocess.Popen([binary, "serve", config_path], stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)


def answers(port: int, timeout: float = 2.0) -> bool:
    """Whether a registry answers GET /v2/ on 127.0.0.1:`port` (200, or 401 with auth)."""
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        try:
            conn.request("GET", "/v2/")
            return conn.getresponse().status in (200, 401)
        finally:
            conn.close()
    except OSError:
        return False


def wait_answering(port: int, alive: Callable[[], bool], timeout: float) -> bool:
    """Poll /v2/ until it answers (True), the process dies or `timeout` passes (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            return False
        if answers(port):
            return True
        time.sleep(0.05)
    return False


class LocalRegistry:
    """docker-registry on 127.0.0.1:<port>, with optional htpasswd or token auth."""

    def __init__(self, *, users: Mapping[str, str] | None = None, token: "TokenServer | None" = None,
                 port: int | None = None, binary: str | None = None, log_level: str = "warn",
                 start_timeout: float = 20.0) -> None:
        if users and token:
            raise LabkitError("a registry uses either htpasswd users or a token server, not both",
                              "give the users to the TokenServer instead")
        self.users = dict(users or {})
        self.token = token
        self.port = port
        self.binary = binary or find_registry_binary()
        self.log_level = log_level
        self.start_timeout = start_timeout
        self.root: str | None = None
        self.process: subprocess.Popen | None = None

    # --- what a notebook uses ----------------------------------------------------------------
    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def config_path(self) -> str:
        assert self.root
        return os.path.join(self.root, "config.yml")

    @property
    def storage(self) -> str:
        assert self.root
        return os.path.join(self.root, "storage")

    def reference(self, name: str) -> str:
        """'demo/hello:1.0' → '127.0.0.1:PORT/demo/hello:1.0'."""
        return f"{self.host}/{name}"

    def client(self, **kwargs: Any):
        """A RegistryClient for this registry (pass credentials= when it has users)."""
        from .client import RegistryClient
        return RegistryClient(self.host, **kwargs)

    def logs(self) -> str:
        try:
            with open(os.path.join(self.root or "", "registry.log"), errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.running else "stopped"
        auth = "htpasswd" if self.users else ("token" if self.token else "open")
        return f"LocalRegistry({self.url}, {auth}, {state})"

    # --- lifecycle ---------------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """The registry's config (YAML is a superset of JSON, so it is written as JSON)."""
        assert self.root
        auth: dict[str, Any] | None = None
        if self.users:
            auth = {"htpasswd": {"realm": "labkit-registry", "path": os.path.join(self.root, "htpasswd")}}
        elif self.token:
            auth = {"token": {"realm": self.token.realm, "service": self.token.service,
                              "issuer": self.token.issuer, "rootcertbundle": self.token.cert_path}}
        return registry_config(self.storage, self.port or 0, self.log_level, auth)

    def start(self) -> "LocalRegistry":
        if self.running:
            return self
        if not self.binary:
            raise LabkitError("no docker-registry binary found",
                              "apt-get install docker-registry (Debian/Ubuntu ship CNCF distribution as it)")
        if self.token and not self.token.running:
            self.token.start()
            self.token._owned_by_registry = True
        self.root = tempfile.mkdtemp(prefix="labkit-registry-")
        fixed_port = self.port is not None
        try:
            if self.users:
                with open(os.path.join(self.root, "htpasswd"), "w") as f:
                    f.writelines(f"{user}:{bcrypt_hash(pw)}\n" for user, pw in self.users.items())
            for attempt in range(3):
                if not fixed_port:
                    self.port = free_port()
                write_config(self.config_path, self.config())
                if self._spawn():
                    atexit.register(self.stop)
                    return self
                if fixed_port or "address already in use" not in self.logs():
                    break
            raise LabkitError(f"docker-registry did not start on {self.host}:\n{self.logs()[-2000:]}",
                              "look at the log above; another process may hold the port")
        except BaseException:
            self.stop()
            raise

    def _spawn(self) -> bool:
        log = os.path.join(self.root or "", "registry.log")
        self.process = process = spawn_registry(self.binary or "", self.config_path, log)
        if wait_answering(self.port or 0, lambda: process.poll() is None, self.start_timeout):
            return True
        if process.poll() is not None:  # it exited: the caller reads the log
            self.process = None
            return False
        self._kill()
        return False

    def _kill(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=5)

    def stop(self) -> None:
        """Stop the registry by its PID and remove its storage."""
        self._kill()
        atexit.unregister(self.stop)
        if self.root:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None
        if self.token is not None and self.token._owned_by_registry:
            self.token.stop()

    def __enter__(self) -> "LocalRegistry":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


# --- a token server ---------------------------------------------------------------------------------
def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def libtrust_key_id(der_public_key: bytes) -> str:
    """The key id distribution expects in a token's "kid": base32 of the first 240 bits of
    sha256(DER SubjectPublicKeyInfo), in 12 groups of 4 separated by ':'."""
    encoded = base64.b32encode(hashlib.sha256(der_public_key).digest()[:30]).decode()
    return ":".join(encoded[i:i + 4] for i in range(0, len(encoded), 4))


class TokenServer:
    """A tiny token server on loopback, like Docker Hub's auth service.

    GET /token?service=…&scope=repository:<name>:pull,push[&scope=…] with optional Basic
    credentials answers {"token": <JWT>, "expires_in": …}. The JWT is RS256-signed
    (with the `openssl` command) by a key whose certificate the registry trusts.
    Users get the actions they ask for; anonymous clients get `pull` only if
    `anonymous_pull`. Every request is kept in `.requests` for tests and notebooks.
    """

    def __init__(self, users: Mapping[str, str] | None = None, *, service: str = "labkit-registry",
                 issuer: str = "labkit-token-server", anonymous_pull: bool = False, expires_in: int = 300) -> None:
        self.users = dict(users or {})
        self.service = service
        self.issuer = issuer
        self.anonymous_pull = anonymous_pull
        self.expires_in = expires_in
        self.requests: list[dict[str, Any]] = []
        self.root: str | None = None
        self.port: int | None = None
        self.kid = ""
        self._server: http.server.ThreadingHTTPServer | None = None
        self._owned_by_registry = False
        self._lock = threading.Lock()

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def realm(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    @property
    def cert_path(self) -> str:
        return os.path.join(self.root or "", "token.crt")

    def __repr__(self) -> str:
        return f"TokenServer({self.realm if self.running else 'stopped'}, service={self.service!r})"

    def start(self) -> "TokenServer":
        if self.running:
            return self
        if not shutil.which("openssl"):
            raise LabkitError("the token server signs with the openssl command, which is missing",
                              "apt-get install openssl")
        self.root = tempfile.mkdtemp(prefix="labkit-token-")
        key = os.path.join(self.root, "token.key")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
                        "-out", self.cert_path, "-days", "2", "-subj", "/CN=labkit-token-server"],
                       check=True, capture_output=True)
        pem = subprocess.run(["openssl", "x509", "-in", self.cert_path, "-pubkey", "-noout"],
                             check=True, capture_output=True).stdout
        der = subprocess.run(["openssl", "pkey", "-pubin", "-outform", "DER"], input=pem,
                             check=True, capture_output=True).stdout
        self.kid = libtrust_key_id(der)
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                status, body = server._answer(self.path, self.headers.get("Authorization"))
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                         name="labkit-token-server", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self.root:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    def __enter__(self) -> "TokenServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _answer(self, path: str, authorization: str | None) -> tuple[int, dict[str, Any]]:
        parts = urllib.parse.urlsplit(path)
        query = urllib.parse.parse_qs(parts.query)
        account = None
        if authorization and authorization.lower().startswith("basic "):
            try:
                user, _, password = base64.b64decode(authorization[6:]).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                user, password = "", None
            if self.users.get(user) != password:
                with self._lock:
                    self.requests.append({"account": user, "scopes": query.get("scope", []), "granted": None})
                return 401, {"details": "incorrect username or password"}
            account = user
        if parts.path != "/token" or query.get("service", [""])[0] != self.service:
            return 400, {"details": "unknown service"}
        access = []
        for scope in " ".join(query.get("scope", [])).split():
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            wanted = [a for a in actions.split(",") if a]
            if account:
                granted = wanted
            else:
                granted = [a for a in wanted if a == "pull"] if self.anonymous_pull and kind == "repository" else []
            if granted:
                access.append({"type": kind, "name": name, "actions": granted})
        with self._lock:
            self.requests.append({"account": account, "scopes": query.get("scope", []), "granted": access})
        now = int(time.time())
        claims = {"iss": self.issuer, "sub": account or "", "aud": self.service, "exp": now + self.expires_in,
                  "nbf": now - 10, "iat": now, "jti": secrets.token_hex(8), "access": access}
        token = self.sign(claims)
        return 200, {"token": token, "access_token": token, "expires_in": self.expires_in,
                     "issued_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))}

    def sign(self, claims: dict[str, Any]) -> str:
        header = {"typ": "JWT", "alg": "RS256", "kid": self.kid}
        signing_input = (_b64url(json.dumps(header).encode()) + "." + _b64url(json.dumps(claims).encode())).encode()
        signature = subprocess.run(["openssl", "dgst", "-sha256", "-sign", os.path.join(self.root or "", "token.key")],
                                   input=signing_input, check=True, capture_output=True).stdout
        return signing_input.decode() + "." + _b64url(signature)
