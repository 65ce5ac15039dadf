"""The demo answers only its own page: Host and Origin checks and security headers (pure ASGI).

Installed as a middleware of gradio's own FastAPI app (``launch(app_kwargs={"middleware": ...})``,
see :func:`~.app.launch_app`), so it sees every request, the upload route and the queue included:

- **Host**: the request's ``Host`` must name this server: ``127.0.0.1``, ``localhost``, ``[::1]``
  or the ``--host`` given, with the port. That closes DNS rebinding (a page on
  ``attacker.example`` whose name is made to resolve to 127.0.0.1 still sends
  ``Host: attacker.example``). When the demo listens on every interface (0.0.0.0 / ::), other
  computers reach it by this computer's address, so any IP address literal and this computer's
  own name are accepted too (an IP literal cannot be rebound).
- **Origin**: a request carrying an ``Origin`` header (browsers send one with every upload, API
  call and cross-origin fetch) must come from the page's own origin (``http://`` + its Host).
  ``Origin: null`` (a sandboxed or ``file:`` page, or a same-origin POST under
  ``Referrer-Policy: no-referrer``) is accepted only with ``Sec-Fetch-Site: same-origin``.
- refusals are ``403`` with a one-line text; every response (refusals included) carries
  :data:`SECURITY_HEADERS`; files served from the upload cache also get ``Cache-Control: no-store``.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any, Awaitable, Callable, Iterable
from urllib.parse import urlsplit

Scope = dict[str, Any]
Message = dict[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]]

# A policy that gradio's page works under (checked in the real-browser test): scripts and styles
# from the app itself (gradio inlines its start-up config and styles), images/media also as
# data:/blob: (previews), connections only back to the app, never framed by another page.
CSP = "; ".join([
    "default-src 'self'",
    "script-src 'self' 'unsafe-inline'",
    "style-src 'self' 'unsafe-inline'",
    "img-src 'self' data: blob:",
    "media-src 'self' data: blob:",
    "font-src 'self' data:",
    "connect-src 'self'",
    "worker-src 'self' blob:",
    "object-src 'none'",
    "base-uri 'self'",
    "form-action 'self'",
    "frame-ancestors 'none'",
])
SECURITY_HEADERS = {
    "content-security-policy": CSP,
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cross-origin-resource-policy": "same-origin",
}
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")


def _split_host(value: str) -> tuple[str, int | None]:
    """``name[:port]`` / ``[v6][:port]`` -> (lower-case name without brackets, port or None)."""
    value = value.strip().lower()
    if value.startswith("["):
        name, _, rest = value[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif value.count(":") == 1:
        name, _, port = value.partition(":")
    else:
        name, port = value, ""
    try:
        return name, int(port) if port else None
    except ValueError:
        return name, -1


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


def is_unspecified(host: str) -> bool:
    """0.0.0.0 or :: (listen on every interface)."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        return False


class HostPolicy:
    """Which ``Host`` headers name this server (see the module doc)."""

    def __init__(self, host: str, port: int, extra: Iterable[str] = ()):
        self.port = int(port)
        self.any_ip = is_unspecified(host)
        names = {*LOOPBACK_NAMES, host.strip().strip("[]").lower(), *(e.strip().strip("[]").lower() for e in extra)}
        if self.any_ip:
            me = socket.gethostname().lower()  # no name lookup
            names |= {me, f"{me}.local"}
        self.names = frozenset(n for n in names if n)

    def allows(self, host_header: str | None) -> bool:
        if not host_header:
            return False
        name, port = _split_host(host_header)
        if port is None:
            port = 80
        if port != self.port:
            return False
        return name in self.names or (self.any_ip and _is_ip(name))


def _same_origin(origin: str, host_header: str) -> bool:
    parts = urlsplit(origin.strip().lower())
    return parts.scheme == "http" and parts.netloc == host_header.strip().lower() and not parts.path.strip("/")


class LocalOnlyGuard:
    """ASGI middleware: refuse foreign Host / Origin (403) and add the security headers."""

    def __init__(self, app: ASGIApp, host: str = "127.0.0.1", port: int = 7860, extra_hosts: Iterable[str] = ()):
        self.app = app
        self.policy = HostPolicy(host, port, extra_hosts)

    def refusal(self, scope: Scope) -> str | None:
        """Why this request is refused, or None."""
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        host = headers.get("host", "")
        if not self.policy.allows(host):
            return f"forbidden: this demo answers only requests addressed to it (Host {host!r} is not allowed)"
        origin = headers.get("origin")
        if origin is None:
            return None
        if origin.strip().lower() == "null":
            if headers.get("sec-fetch-site") == "same-origin":
                return None
            return "forbidden: requests from an opaque (null) origin are refused"
        if not _same_origin(origin, host):
            return f"forbidden: cross-origin request from {origin!r} refused; use the demo's own page"
        return None

    async def __call__(self, scope: Scope, receive: Callable[[], Awaitable[Message]], send: Callable[[Message], Awaitable[None]]) -> None:
        kind = scope.get("type")
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        reason = self.refusal(scope)
        if reason is not None and kind == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        no_store = "/file=" in scope.get("path", "") or "/file/" in scope.get("path", "")

        async def send_with_headers(message: Message) -> None:
            if message.get("type") == "http.response.start":
                raw = [(k, v) for k, v in message.get("headers", []) if k.decode("latin-1").lower() not in SECURITY_HEADERS]
                raw += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in SECURITY_HEADERS.items()]
                if no_store:
                    raw = [(k, v) for k, v in raw if k.lower() != b"cache-control"] + [(b"cache-control", b"no-store")]
                message = {**message, "headers": raw}
            await send(message)

        if reason is None:
            await self.app(scope, receive, send_with_headers)
            return
        body = (reason + "\n").encode("utf-8")
        await send_with_headers({"type": "http.response.start", "status": 403,
                                 "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]})
        await send_with_headers({"type": "http.response.body", "body": body})
