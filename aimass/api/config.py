"""Settings of the control-plane API: tokens, limits. From the environment, never from a request.

========================================  =====================================================
``AIMASS_API_TOKEN_FILE``                 file of bearer tokens, one per line: ``<token>`` or
                                          ``<identity>:<token>`` (``#`` comments allowed)
``AIMASS_API_TOKEN``                      one bearer token (prefer the file: env leaks more easily)
``AIMASS_API_ADMINS``                     comma-separated identities that may see every run
``AIMASS_API_MAX_BODY_BYTES``             largest request body (default 2 MiB): 413 above it
``AIMASS_API_RATE_PER_S`` / ``_BURST``    per-identity token bucket (default 5/s, burst 20)
``AIMASS_API_BACKEND``                    ``k8s`` (default) or ``ray``
========================================  =====================================================
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from aimass.exceptions import AuthError, InvalidRequestError

__all__ = ["ApiConfig", "MIN_TOKEN_LENGTH", "parse_token_file", "token_identity"]

MIN_TOKEN_LENGTH = 16
_IDENTITY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,62}$")


def token_identity(token: str) -> str:
    """The identity of an anonymous token: stable, and reveals nothing about the token."""
    return "token-" + hashlib.sha256(token.encode()).hexdigest()[:10]


def parse_token_file(text: str, source: str = "token file") -> dict[str, str]:
    """``{token: identity}`` from a token file (see the module docs)."""
    tokens: dict[str, str] = {}
    for n, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if ":" in line:
            ident, tok = (p.strip() for p in line.split(":", 1))
            if not _IDENTITY_RE.match(ident):
                raise InvalidRequestError("invalid identity in the API token file", got=ident, location=f"{source}:{n}",
                                          fix="Identities use letters, digits, '_', '.', '@' and '-'.")
        else:
            ident, tok = "", line
        if len(tok) < MIN_TOKEN_LENGTH or any(c.isspace() for c in tok):
            raise InvalidRequestError(f"API token too short or malformed (at least {MIN_TOKEN_LENGTH} characters, no spaces)",
                                      location=f"{source}:{n}", fix="Generate one with `openssl rand -hex 32`.")
        tokens[tok] = ident or token_identity(tok)
    return tokens


@dataclass
class ApiConfig:
    """What the API server enforces.

    Attributes:
        tokens: bearer token -> identity (the identity becomes the owner of the runs it submits).
        admins: identities that see and cancel every run, not only their own.
        insecure_local: no authentication (only allowed on a loopback address; for development).
        max_body_bytes: larger request bodies get 413 before they are parsed.
        rate_per_s / burst: the per-identity token bucket (429 with Retry-After when empty).
        max_log_lines: the most lines ``GET .../logs`` returns without ``follow``.
        max_follow_s: how long one ``follow`` stream may stay open.
        backend: ``k8s`` or ``ray`` (when no backend object is injected).
    """

    tokens: dict[str, str] = field(default_factory=dict, repr=False)
    admins: frozenset[str] = frozenset()
    insecure_local: bool = False
    max_body_bytes: int = 2 * 1024 * 1024
    rate_per_s: float = 5.0
    burst: int = 20
    max_log_lines: int = 10_000
    max_follow_s: float = 3600.0
    backend: str = "k8s"

    @classmethod
    def from_env(cls, *, insecure_local: bool = False, **overrides) -> "ApiConfig":
        tokens: dict[str, str] = {}
        path = os.environ.get("AIMASS_API_TOKEN_FILE")
        if path:
            p = Path(path)
            try:
                tokens.update(parse_token_file(p.read_text(), str(p)))
            except OSError as exc:
                raise AuthError("cannot read AIMASS_API_TOKEN_FILE", got=str(p), fix="Check the path (a mounted Secret).") from exc
        env_token = os.environ.get("AIMASS_API_TOKEN", "").strip()
        if env_token:
            tokens.update(parse_token_file(env_token, "AIMASS_API_TOKEN"))

        def num(name: str, default: float, cast=float):
            try:
                return cast(os.environ.get(name, default))
            except ValueError:
                raise InvalidRequestError(f"{name} must be a number", got=os.environ.get(name)) from None

        cfg = cls(
            tokens=tokens,
            admins=frozenset(a.strip() for a in os.environ.get("AIMASS_API_ADMINS", "").split(",") if a.strip()),
            insecure_local=insecure_local,
            max_body_bytes=num("AIMASS_API_MAX_BODY_BYTES", 2 * 1024 * 1024, int),
            rate_per_s=num("AIMASS_API_RATE_PER_S", 5.0),
            burst=num("AIMASS_API_RATE_BURST", 20, int),
            backend=os.environ.get("AIMASS_API_BACKEND", "k8s"),
        )
        for k, v in overrides.items():
            setattr(cfg, k, v)
        return cfg

    def check(self, host: str | None = None) -> None:
        """Refuse configurations that would expose an open API."""
        if self.insecure_local:
            if host is not None and host not in ("127.0.0.1", "::1", "localhost"):
                raise AuthError("--insecure-local only listens on a loopback address", got=host,
                                fix="Use --host 127.0.0.1, or configure a token (AIMASS_API_TOKEN_FILE) to listen elsewhere.")
            return
        if not self.tokens:
            raise AuthError("refusing to start the API without a token",
                            fix="Set AIMASS_API_TOKEN_FILE to a file holding a token (`openssl rand -hex 32`), "
                                "or use --insecure-local on 127.0.0.1 for development.")
        if self.max_body_bytes < 1024 or self.rate_per_s <= 0 or self.burst < 1:
            raise InvalidRequestError("API limits out of range",
                                      got={"max_body_bytes": self.max_body_bytes, "rate_per_s": self.rate_per_s, "burst": self.burst})
