"""Registry authentication: WWW-Authenticate challenges, credentials, bearer tokens.

The flow (distribution spec "token authentication", as Docker Hub does it):
1. a request answers 401 with `WWW-Authenticate: Bearer realm="…",service="…",scope="…"`;
2. the client asks the realm for a token: GET realm?service=…&scope=… (with Basic
   credentials if it has some, anonymously otherwise);
3. it retries with `Authorization: Bearer <token>`; the token is cached per scope
   (e.g. "repository:library/busybox:pull") until it expires.
A `Basic realm="…"` challenge (htpasswd) instead wants the credentials on every request.
"""
from __future__ import annotations

import base64
import dataclasses
import json
import os
import threading
import time
from typing import Any

from .reference import DOCKER_HUB, _HUB_ALIASES


@dataclasses.dataclass(frozen=True)
class Challenge:
    scheme: str                 # "bearer" or "basic", lowercased
    params: dict[str, str]

    @property
    def realm(self) -> str | None:
        return self.params.get("realm")

    @property
    def service(self) -> str | None:
        return self.params.get("service")

    @property
    def scopes(self) -> tuple[str, ...]:
        return tuple(self.params.get("scope", "").split())


def parse_www_authenticate(header: str) -> list[Challenge]:
    """Parse `WWW-Authenticate` into challenges (RFC 7235: scheme, then k=v or k="quoted")."""
    challenges: list[Challenge] = []
    i, n = 0, len(header or "")
    text = header or ""
    current: Challenge | None = None
    while i < n:
        while i < n and text[i] in " \t,":
            i += 1
        start = i
        while i < n and text[i] not in " \t,=":
            i += 1
        token = text[start:i]
        if not token:
            break
        j = i
        while j < n and text[j] in " \t":
            j += 1
        if j < n and text[j] == "=" and current is not None:
            i = j + 1
            while i < n and text[i] in " \t":
                i += 1
            if i < n and text[i] == '"':
                i += 1
                value = []
                while i < n and text[i] != '"':
                    if text[i] == "\\" and i + 1 < n:
                        i += 1
                    value.append(text[i])
                    i += 1
                i += 1  # closing quote
                current.params[token.lower()] = "".join(value)
            else:
                start = i
                while i < n and text[i] not in " \t,":
                    i += 1
                current.params[token.lower()] = text[start:i]
        else:
            current = Challenge(token.lower(), {})
            challenges.append(current)
            i = j
    return challenges


@dataclasses.dataclass(frozen=True)
class Credentials:
    username: str
    password: str

    def basic_header(self) -> str:
        return "Basic " + base64.b64encode(f"{self.username}:{self.password}".encode()).decode()

    def __repr__(self) -> str:  # never show the password
        return f"Credentials(username={self.username!r}, password='***')"


def as_credentials(value: Any) -> Credentials | None:
    if value is None or isinstance(value, Credentials):
        return value
    if isinstance(value, (tuple, list)) and len(value) == 2:
        return Credentials(str(value[0]), str(value[1]))
    raise TypeError("credentials are (username, password) or a Credentials")


def docker_config_path() -> str:
    base = os.environ.get("DOCKER_CONFIG") or os.path.join(os.path.expanduser("~"), ".docker")
    return os.path.join(base, "config.json")


def _normalize_auth_key(key: str) -> str:
    host = key
    for prefix in ("https://", "http://"):
        if host.startswith(prefix):
            host = host[len(prefix):]
    host = host.split("/", 1)[0].lower()
    return DOCKER_HUB if host in _HUB_ALIASES else host


def credentials_from_docker_config(registry: str, path: str | None = None) -> Credentials | None:
    """Credentials for `registry` from the `auths` of a docker config.json (`docker login`).

    Credential helpers (credsStore/credHelpers) are not run; only stored auths are read.
    """
    path = path or docker_config_path()
    try:
        with open(path) as f:
            config = json.load(f)
    except (OSError, ValueError):
        return None
    wanted = _normalize_auth_key(registry)
    for key, entry in (config.get("auths") or {}).items():
        if _normalize_auth_key(key) != wanted or not isinstance(entry, dict):
            continue
        if entry.get("username") and entry.get("password") is not None:
            return Credentials(entry["username"], entry["password"])
        if entry.get("auth"):
            try:
                user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                continue
            return Credentials(user, password)
    return None


@dataclasses.dataclass
class Token:
    value: str
    expires_at: float

    def valid(self, now: float | None = None) -> bool:
        return (time.monotonic() if now is None else now) < self.expires_at - 5


class TokenCache:
    """Bearer tokens by (realm, service, scopes); thread-safe."""

    def __init__(self) -> None:
        self._tokens: dict[tuple[str, str, tuple[str, ...]], Token] = {}
        self._lock = threading.Lock()

    @staticmethod
    def key(realm: str, service: str | None, scopes: tuple[str, ...] | list[str]) -> tuple[str, str, tuple[str, ...]]:
        return (realm, service or "", tuple(sorted(set(scopes))))

    def get(self, key: tuple[str, str, tuple[str, ...]]) -> Token | None:
        with self._lock:
            token = self._tokens.get(key)
            if token and not token.valid():
                del self._tokens[key]
                return None
            return token

    def put(self, key: tuple[str, str, tuple[str, ...]], token: Token) -> None:
        with self._lock:
            self._tokens[key] = token

    def find(self, realm: str, service: str | None, scopes: tuple[str, ...] | list[str]) -> Token | None:
        """A valid cached token whose scopes cover all of `scopes` (a pull,push token serves a pull)."""
        wanted = parse_scopes(scopes)
        with self._lock:
            for (r, s, have), token in list(self._tokens.items()):
                if r != realm or s != (service or "") or not token.valid():
                    continue
                granted = parse_scopes(have)
                if all(actions <= granted.get(resource, set()) for resource, actions in wanted.items()):
                    return token
        return None

    def __len__(self) -> int:
        return len(self._tokens)


def parse_scopes(scopes: tuple[str, ...] | list[str]) -> dict[str, set[str]]:
    """'repository:a/b:pull,push' → {'repository:a/b': {'pull', 'push'}} (merged over all scopes)."""
    out: dict[str, set[str]] = {}
    for scope in scopes:
        resource, _, actions = scope.rpartition(":")
        if not resource:
            resource, actions = scope, ""
        out.setdefault(resource, set()).update(a for a in actions.split(",") if a)
    return out


def merge_scopes(scopes: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """One scope per resource with all its actions:
    (repository:x:pull, repository:x:push) → repository:x:pull,push."""
    order = ("pull", "push", "delete", "*")
    merged = []
    for resource, actions in sorted(parse_scopes(scopes).items()):
        ranked = sorted(actions, key=lambda a: (order.index(a) if a in order else len(order), a))
        merged.append(f"{resource}:{','.join(ranked)}")
    return tuple(merged)


def token_from_response(body: bytes) -> Token:
    """A token server's JSON answer: {"token" or "access_token", "expires_in", ...}."""
    doc = json.loads(body)
    value = doc.get("token") or doc.get("access_token")
    if not value:
        raise ValueError("the token server's answer has no token")
    expires_in = doc.get("expires_in") or 60  # the spec's default lifetime
    return Token(value, time.monotonic() + max(int(expires_in), 10))


def repository_scope(repository: str, *actions: str) -> str:
    return f"repository:{repository}:{','.join(actions or ('pull',))}"
