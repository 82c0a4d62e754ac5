"""Bearer-token authentication for the serving endpoints.

Where the token comes from (first found): ``auth.tokenFile`` of the serving config, the file named by
``AIMASS_SERVE_TOKEN_FILE``, the value of ``AIMASS_SERVE_TOKEN``. Never from the config itself. A token
file may hold several tokens, one per line (``#`` comments allowed), so a token can be rotated without
downtime; the file is re-read when it changes.

*Local mode* (``auth.mode: none``) needs no token but answers only callers on the loopback interface,
whatever address the proxy binds; :func:`aimass.serving.deploy.deploy` additionally refuses it unless
Serve's proxy listens on a loopback address.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import secrets
import stat
import time
from pathlib import Path

from aimass.exceptions import AuthError, ServingError

__all__ = ["TokenAuth", "ENV_TOKEN", "ENV_TOKEN_FILE", "MIN_TOKEN_CHARS", "ensure_token_file", "read_tokens", "is_loopback"]

ENV_TOKEN = "AIMASS_SERVE_TOKEN"
ENV_TOKEN_FILE = "AIMASS_SERVE_TOKEN_FILE"
MIN_TOKEN_CHARS = 16
_RELOAD_EVERY_S = 2.0


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def read_tokens(path: str | Path) -> list[str]:
    """The tokens in a token file (one per line; blank lines and ``#`` comments skipped)."""
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise ServingError("serving token file not found", got=str(p),
                           fix="Create it (e.g. `aimass serve` writes $AIMASS_HOME/serve-token) or mount the Secret there.") from None
    except OSError as e:
        raise ServingError(f"cannot read the serving token file: {e.strerror}", got=str(p)) from None
    tokens = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    if not tokens:
        raise ServingError("the serving token file holds no token", got=str(p), fix="Write one token per line.")
    short = [t for t in tokens if len(t) < MIN_TOKEN_CHARS]
    if short:
        raise ServingError(f"serving tokens must have at least {MIN_TOKEN_CHARS} characters", got=f"{len(short)} short token(s) in {p}",
                           fix="Generate one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'.")
    return tokens


def ensure_token_file(path: str | Path) -> Path:
    """Create ``path`` with a fresh random token (mode 0600) unless it exists; returns the path."""
    p = Path(path).expanduser()
    if p.exists():
        read_tokens(p)
        return p
    p.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, stat.S_IRUSR | stat.S_IWUSR)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_urlsafe(32) + "\n")
    return p


class TokenAuth:
    """Checks ``Authorization: Bearer <token>`` (constant-time) or, in local mode, the caller's address.

    Args:
        mode: ``token`` or ``none``.
        token_file: overrides the environment lookup.

    Raises:
        ServingError: mode ``token`` and no token can be found (so a misconfigured replica fails to start,
            visibly, instead of serving unauthenticated).
    """

    def __init__(self, mode: str = "token", token_file: str | None = None) -> None:
        self.mode = mode
        self._file: Path | None = None
        self._tokens: list[bytes] = []
        self._mtime = 0.0
        self._checked = 0.0
        if mode == "none":
            return
        if mode != "token":
            raise ServingError(f"unknown auth mode {mode!r}", fix="Use token or none.")
        path = token_file or os.environ.get(ENV_TOKEN_FILE)
        if path:
            self._file = Path(path).expanduser()
            self._load()
        elif os.environ.get(ENV_TOKEN):
            tok = os.environ[ENV_TOKEN].strip()
            if len(tok) < MIN_TOKEN_CHARS:
                raise ServingError(f"{ENV_TOKEN} must have at least {MIN_TOKEN_CHARS} characters")
            self._tokens = [tok.encode()]
        else:
            raise ServingError(
                "serving auth is on (auth.mode: token) but no token is configured",
                fix=f"Set auth.tokenFile, or {ENV_TOKEN_FILE} / {ENV_TOKEN} in the replicas' environment; "
                "local mode (auth.mode: none) is allowed only on a loopback address.",
            )

    @property
    def source(self) -> str:
        if self.mode == "none":
            return "none (loopback callers only)"
        return f"file {self._file}" if self._file else f"env {ENV_TOKEN}"

    def _load(self) -> None:
        assert self._file is not None
        self._tokens = [t.encode() for t in read_tokens(self._file)]
        try:
            self._mtime = self._file.stat().st_mtime
        except OSError:
            self._mtime = 0.0
        self._checked = time.monotonic()

    def _maybe_reload(self) -> None:
        if self._file is None or time.monotonic() - self._checked < _RELOAD_EVERY_S:
            return
        self._checked = time.monotonic()
        try:
            mtime = self._file.stat().st_mtime
        except OSError:
            return  # keep the tokens we have: a Secret being re-mounted must not lock everyone out
        if mtime != self._mtime:
            try:
                self._load()
            except ServingError:
                pass

    def check(self, authorization: str | None, client_host: str | None) -> None:
        """Raise :class:`AuthError` unless the request may pass."""
        if self.mode == "none":
            if not is_loopback(client_host):
                raise AuthError("this endpoint runs in local mode (auth.mode: none) and answers loopback callers only",
                                got=client_host, fix="Deploy with auth.mode: token to serve other hosts.")
            return
        self._maybe_reload()
        if not authorization:
            raise AuthError("missing bearer token", fix="Send the header 'Authorization: Bearer <token>'.")
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise AuthError("the Authorization header must be 'Bearer <token>'")
        given = value.strip().encode()
        ok = False
        for t in self._tokens:  # no early exit: the time taken does not tell which token nearly matched
            ok |= hmac.compare_digest(given, t)
        if not ok:
            raise AuthError("invalid bearer token")
