"""HTTP for the registry client: connections, the insecure-registry policy,
authentication retries, redirects, and errors — on the standard library only.

Plain HTTP is used only for loopback hosts (127.0.0.0/8, ::1, localhost) and for
hosts listed as insecure (the `insecure` argument or LABKIT_INSECURE_REGISTRIES,
comma-separated), like docker's `insecure-registries`; everything else must be
HTTPS, and this applies to token realms and redirects too.
"""
from __future__ import annotations

import dataclasses
import http.client
import ipaddress
import os
import ssl
import threading
import time
import urllib.parse
from typing import IO, Any, Iterable, Iterator, Mapping

from .. import __version__
from . import auth as _auth
from .errors import (InsecureRegistryError, RegistryError, RegistryUnreachableError, TooManyRequestsError,
                     UnauthorizedError, from_response)

CHUNK = 1 << 20
MAX_ERROR_BODY = 64 << 10
MAX_REDIRECTS = 5
USER_AGENT = f"labkit/{__version__}"


def is_loopback(host: str | None) -> bool:
    """True for localhost and loopback addresses; never resolves names."""
    if not host:
        return False
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def insecure_registries(extra: Iterable[str] = ()) -> frozenset[str]:
    env = os.environ.get("LABKIT_INSECURE_REGISTRIES", "")
    return frozenset(h.strip().lower() for h in [*env.split(","), *extra] if h.strip())


def check_url_allowed(url: str, insecure: Iterable[str] = ()) -> None:
    """Refuse plain HTTP to anything but loopback or a listed insecure registry."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "https":
        return
    if parts.scheme != "http":
        raise InsecureRegistryError(f"unsupported URL scheme in {url!r}", "registries speak http(s)")
    allowed = insecure_registries(insecure)
    if is_loopback(parts.hostname) or parts.netloc.lower() in allowed or (parts.hostname or "").lower() in allowed:
        return
    raise InsecureRegistryError(
        f"refusing plain HTTP to {parts.netloc}: it is not loopback and not listed as an insecure registry",
        f"use HTTPS, or if you trust the network pass insecure=[{parts.netloc!r}] "
        f"(or set LABKIT_INSECURE_REGISTRIES={parts.netloc})")


def default_endpoint(api_host: str, insecure: Iterable[str] = ()) -> str:
    host = urllib.parse.urlsplit("//" + api_host).hostname
    allowed = insecure_registries(insecure)
    plain = is_loopback(host) or api_host.lower() in allowed or (host or "").lower() in allowed
    return ("http://" if plain else "https://") + api_host


@dataclasses.dataclass
class RequestRecord:
    """One HTTP exchange, kept in Transport.log so a chapter can count requests."""
    method: str
    url: str
    status: int
    headers: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def path(self) -> str:
        return urllib.parse.urlsplit(self.url).path

    def __str__(self) -> str:
        return f"{self.method} {self.path} -> {self.status}"


class Response:
    """A registry response: status, headers, and the body read at once or streamed."""

    def __init__(self, raw: http.client.HTTPResponse, url: str, release) -> None:
        self.raw = raw
        self.url = url
        self.status = raw.status
        self.headers = raw.headers
        self._release = release
        self._done = False

    def header(self, name: str, default: str | None = None) -> str | None:
        return self.headers.get(name, default)

    def read(self, limit: int | None = None) -> bytes:
        data = self.raw.read() if limit is None else self.raw.read(limit)
        if limit is None or not data or self.raw.isclosed():
            self.close()
        return data

    def iter_content(self, chunk: int = CHUNK) -> Iterator[bytes]:
        try:
            while True:
                data = self.raw.read(chunk)
                if not data:
                    break
                yield data
        finally:
            self.close()

    def close(self) -> None:
        if not self._done:
            self._done = True
            complete = self.raw.isclosed() or self.raw.length == 0
            if not complete:
                self.raw.close()
            self._release(reusable=complete and not self.raw.will_close)

    def __enter__(self) -> "Response":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.url}>"


class Transport:
    """Talks HTTP to one registry endpoint, handling auth challenges and redirects."""

    def __init__(self, endpoint: str, *, credentials: _auth.Credentials | None = None,
                 insecure: Iterable[str] = (), timeout: float = 60.0, rate_limit_wait: float = 0.0,
                 user_agent: str = USER_AGENT) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.insecure = tuple(insecure)
        check_url_allowed(self.endpoint, self.insecure)
        self.credentials = credentials
        self.timeout = timeout
        self.rate_limit_wait = rate_limit_wait
        self.user_agent = user_agent
        self.tokens = _auth.TokenCache()
        self.log: list[RequestRecord] = []
        self._bearer: _auth.Challenge | None = None   # the registry's last Bearer challenge
        self._basic = False                           # the registry wants Basic credentials
        self._local = threading.local()
        self._lock = threading.Lock()
        self._ssl: ssl.SSLContext | None = None  # made on first HTTPS use: loading CAs costs ~30 ms

    def __repr__(self) -> str:
        return f"Transport({self.endpoint!r})"

    # --- connections -----------------------------------------------------------------
    def _pool(self) -> dict[tuple[str, str], http.client.HTTPConnection]:
        pool = getattr(self._local, "pool", None)
        if pool is None:
            pool = self._local.pool = {}
        return pool

    def _connection(self, scheme: str, netloc: str) -> tuple[http.client.HTTPConnection, bool]:
        conn = self._pool().pop((scheme, netloc), None)
        if conn is not None:
            return conn, True
        if scheme == "https":
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            return http.client.HTTPSConnection(netloc, timeout=self.timeout, context=self._ssl,
                                               blocksize=CHUNK), False
        return http.client.HTTPConnection(netloc, timeout=self.timeout, blocksize=CHUNK), False

    def close(self) -> None:
        """Close this thread's idle connections."""
        for conn in self._pool().values():
            conn.close()
        self._pool().clear()

    def url(self, path_or_url: str) -> str:
        if path_or_url.startswith(("http://", "https://")):
            return path_or_url
        return self.endpoint + path_or_url

    # --- one exchange ------------------------------------------------------------------
    def _send(self, method: str, url: str, headers: Mapping[str, str], body: Any) -> Response:
        check_url_allowed(url, self.insecure)
        parts = urllib.parse.urlsplit(url)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        start = body.tell() if hasattr(body, "seek") else None
        for attempt in range(2):
            conn, reused = self._connection(parts.scheme, parts.netloc)
            try:
                conn.request(method, target, body=body, headers={"User-Agent": self.user_agent, **headers})
                raw = conn.getresponse()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as exc:
                conn.close()
                resendable = body is None or isinstance(body, (bytes, bytearray)) or start is not None
                if reused and attempt == 0 and resendable:
                    if start is not None:
                        body.seek(start)
                    continue  # a kept-alive connection the server had closed: once more on a new one
                raise RegistryUnreachableError(f"{method} {url}: the connection broke: {exc}",
                                               "the registry closed the connection; retry, or check its log") from None
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                hint = ("nothing listens there: is the registry running? (LocalRegistry().start() for a local one)"
                        if isinstance(exc, ConnectionRefusedError) else
                        "check the host name and that the network is up")
                raise RegistryUnreachableError(f"{method} {url}: {exc}", hint) from None
            key = (parts.scheme, parts.netloc)

            def release(reusable: bool, conn=conn, key=key) -> None:
                if reusable:
                    self._pool()[key] = conn
                else:
                    conn.close()

            response = Response(raw, url, release)
            with self._lock:
                self.log.append(RequestRecord(method, url, raw.status, dict(headers)))
            if method == "HEAD":
                response.read()
            return response
        raise AssertionError("unreachable")

    # --- auth ---------------------------------------------------------------------------
    def _auth_header(self, scopes: tuple[str, ...]) -> str | None:
        if self._bearer is not None and self._bearer.realm:
            token = self.tokens.find(self._bearer.realm, self._bearer.service, scopes)
            if token:
                return f"Bearer {token.value}"
        if self._basic and self.credentials:
            return self.credentials.basic_header()
        return None

    def fetch_token(self, challenge: _auth.Challenge, scopes: tuple[str, ...]) -> _auth.Token:
        """Ask the challenge's realm for a token covering `scopes`, and cache it."""
        realm = challenge.realm
        if not realm:
            raise UnauthorizedError("the registry's Bearer challenge names no realm",
                                    "the registry is misconfigured; its auth.token.realm must be set")
        params = [("service", challenge.service)] if challenge.service else []
        if self.credentials:
            params.append(("account", self.credentials.username))
        params += [("scope", s) for s in _auth.merge_scopes(scopes)]
        url = realm + ("&" if "?" in realm else "?") + urllib.parse.urlencode(params)
        headers = {"Accept": "application/json"}
        if self.credentials:
            headers["Authorization"] = self.credentials.basic_header()
        response = self._send("GET", url, headers, None)
        body = response.read()
        if response.status != 200:
            err = from_response(response.status, response.headers, body, f"token request to {realm}")
            if response.status in (401, 403):
                err = UnauthorizedError(
                    err.what, "the token server refused " + ("these credentials" if self.credentials else
                                                             "anonymous access") +
                    "; pass credentials=(user, password) or check them", status=response.status)
            raise err
        try:
            token = _auth.token_from_response(body)
        except ValueError as exc:
            raise UnauthorizedError(f"token server {realm} answered without a usable token: {exc}",
                                    "check the token server's configuration") from None
        self.tokens.put(self.tokens.key(realm, challenge.service, scopes), token)
        return token

    def _answer_challenge(self, response: Response, scopes: tuple[str, ...], had_auth: bool) -> bool:
        """After a 401: set up auth from WWW-Authenticate; False when there is nothing more to try."""
        challenges = _auth.parse_www_authenticate(response.header("WWW-Authenticate", "") or "")
        bearer = next((c for c in challenges if c.scheme == "bearer"), None)
        basic = next((c for c in challenges if c.scheme == "basic"), None)
        if bearer is not None:
            self._bearer = bearer
            self.fetch_token(bearer, _auth.merge_scopes((*scopes, *bearer.scopes)))
            return True
        if basic is not None:
            if self._basic and had_auth:
                return False
            self._basic = True
            return self.credentials is not None
        return False

    def learn(self, challenges: list[_auth.Challenge]) -> None:
        """Remember how the registry wants to be authenticated (from GET /v2/'s challenge)."""
        bearer = next((c for c in challenges if c.scheme == "bearer"), None)
        if bearer is not None:
            self._bearer = bearer
        elif any(c.scheme == "basic" for c in challenges):
            self._basic = True

    def authenticate(self, scopes: Iterable[str] = ()) -> None:
        """Get credentials in place for `scopes` before fanning out to threads: learn the
        registry's challenge from GET /v2/ if need be, then fetch a token for the scopes."""
        scopes = tuple(scopes)
        if self._bearer is None and not self._basic:
            response = self._send("GET", self.url("/v2/"), {}, None)
            response.read(MAX_ERROR_BODY)
            response.close()
            if response.status != 401:
                return
            self.learn(_auth.parse_www_authenticate(response.header("WWW-Authenticate", "") or ""))
        if self._bearer is not None and self._bearer.realm and \
                self.tokens.find(self._bearer.realm, self._bearer.service, scopes) is None:
            self.fetch_token(self._bearer, _auth.merge_scopes(scopes))

    # --- the public entry -------------------------------------------------------------------
    def request(self, method: str, path_or_url: str, *, headers: Mapping[str, str] | None = None,
                body: bytes | IO[bytes] | None = None, scopes: Iterable[str] = (),
                expect: Iterable[int] = (200,), what: str | None = None, stream: bool = False) -> Response:
        """Send one request, answering auth challenges and following GET/HEAD redirects.

        A status outside `expect` raises the matching RegistryError. With
        `stream=True` the body is left unread: iterate `iter_content()` or `close()`.
        """
        scopes = tuple(scopes)
        expect = tuple(expect)
        url = self.url(path_or_url)
        what = what or f"{method} {urllib.parse.urlsplit(url).path}"
        own_host = urllib.parse.urlsplit(self.endpoint).netloc
        tried_auth = False
        waited = False
        redirects = 0
        while True:
            send_headers = dict(headers or {})
            same_host = urllib.parse.urlsplit(url).netloc == own_host
            auth_value = self._auth_header(scopes) if same_host else None
            if auth_value:
                send_headers["Authorization"] = auth_value
            if body is not None and hasattr(body, "seek") and (tried_auth or waited):
                body.seek(0)
            response = self._send(method, url, send_headers, body)
            status = response.status
            if status == 401 and same_host and not tried_auth:
                first_body = response.read(MAX_ERROR_BODY) if method != "HEAD" else b""
                response.close()
                tried_auth = True
                if self._answer_challenge(response, scopes, auth_value is not None):
                    continue
                raise self._unauthorized(response, first_body, what)
            if status in (301, 302, 303, 307, 308) and method in ("GET", "HEAD") and status not in expect:
                location = response.header("Location")
                response.close()
                redirects += 1
                if not location or redirects > MAX_REDIRECTS:
                    raise RegistryError(f"{what}: too many or empty redirects", "the registry is misconfigured")
                url = urllib.parse.urljoin(url, location)
                continue
            if status == 429 and not waited:
                err = from_response(status, response.headers, response.read(MAX_ERROR_BODY), what)
                response.close()
                if err.retry_after is not None and err.retry_after <= self.rate_limit_wait:
                    time.sleep(err.retry_after)
                    waited = True
                    continue
                raise err
            if status in expect:
                if not stream and method != "HEAD":
                    data = response.read()
                    response.data = data  # type: ignore[attr-defined]
                return response
            data = response.read(MAX_ERROR_BODY) if method != "HEAD" else b""
            response.close()
            if status == 401:
                raise self._unauthorized(response, data, what)
            raise from_response(status, response.headers, data, what)

    def _unauthorized(self, response: Response, body: bytes, what: str) -> RegistryError:
        err = from_response(401, response.headers, body, what)
        if not isinstance(err, UnauthorizedError):
            return err
        if self.credentials is None:
            hint = ("this registry wants you to log in: pass credentials=(user, password), "
                    "or add them to ~/.docker/config.json (`docker login`)")
        else:
            hint = (f"the registry refused the credentials of {self.credentials.username!r}: "
                    "check the user name and password")
        return UnauthorizedError(err.what, hint, status=401, code=err.code, detail=err.detail)


__all__ = ["Transport", "Response", "RequestRecord", "check_url_allowed", "default_endpoint", "is_loopback",
           "insecure_registries", "TooManyRequestsError"]
