"""Bearer-token credentials of the model and drift services.

A scope (inference, admin, webhook) holds tokens from a setting or a mounted secret file; a
request presents one as `Authorization: Bearer <token>` (RFC 6750), as KServe, Seldon and
Prometheus' own scrape auth do. Read-only pages also take HTTP Basic with the token as the
password, so a browser can open them; a state-changing route takes only a bearer token, which
a browser never sends by itself (no cross-site request can start a retraining).

Tokens are compared as SHA-256 digests in constant time; an example value (`change-me...`) or
a token shorter than 16 characters refuses to start the service.
"""

import argparse
import base64
import hashlib
import hmac
import os
import secrets
import sys
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr

MIN_LENGTH = 16
EXAMPLE = "change-me"


class Unauthorized(HTTPException):
    """401 with the challenge RFC 6750 asks for (and Basic's, where a browser may answer)."""

    def __init__(self, scope: str, detail: str, *, basic: bool = False) -> None:
        super().__init__(401, detail, headers={"WWW-Authenticate": challenge(scope, basic)})


def challenge(scope: str, basic: bool = False) -> str:
    """The WWW-Authenticate value of a 401."""
    bearer = f'Bearer realm="{scope}", error="invalid_token"'
    return bearer + (f', Basic realm="{scope}"' if basic else "")


class Tokens:
    """The tokens of one scope, kept as digests."""

    def __init__(self, scope: str, tokens: Iterable[str]) -> None:
        self.scope = scope
        self.digests = [_digest(token) for token in tokens]

    @classmethod
    def from_settings(
        cls, scope: str, value: SecretStr | None, file: Path | None, *, name: str
    ) -> "Tokens":
        """Comma-separated tokens from the setting `name`, or one per line of `name`_FILE."""
        if file is not None:
            text = file.read_text()
            tokens = [line.strip() for line in text.splitlines()]
        else:
            text = value.get_secret_value() if value is not None else ""
            tokens = [token.strip() for token in text.split(",")]
        tokens = [token for token in tokens if token]
        for token in tokens:
            if problem := _problem(name, token):
                raise ValueError(f"{problem}: set a secret")
        return cls(scope, tokens)

    def __bool__(self) -> bool:
        return bool(self.digests)

    def allows(self, token: str) -> bool:
        presented = _digest(token)
        return any(hmac.compare_digest(presented, digest) for digest in self.digests)

    def check(self, authorization: str | None, *, basic: bool = False) -> None:
        """Raise Unauthorized unless `authorization` (the header) carries one of the tokens."""
        if not self.digests:
            raise HTTPException(403, f"{self.scope} routes are disabled: no credential is set")
        token = presented(authorization, basic=basic)
        if token is None:
            detail = f"{self.scope} credential required: {_EXPECTED}"
            raise Unauthorized(self.scope, detail, basic=basic)
        if not self.allows(token):
            raise Unauthorized(self.scope, f"wrong {self.scope} credential", basic=basic)


_EXPECTED = "Authorization: Bearer <token>"


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def presented(authorization: str | None, *, basic: bool = False) -> str | None:
    """The token in an Authorization header: a bearer token, or Basic's password if allowed."""
    if not authorization:
        return None
    kind, _, value = authorization.strip().partition(" ")
    if kind.lower() == "bearer" and value.strip():
        return value.strip()
    if basic and kind.lower() == "basic":
        try:
            _, _, password = base64.b64decode(value, validate=True).decode().partition(":")
        except ValueError:  # not base64 (binascii.Error), not ASCII, not UTF-8 inside
            return None
        return password or None
    return None


_bearer = HTTPBearer(auto_error=False, description="the service's token (see services/README)")
Header = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def bearer(*scopes: Tokens) -> Callable[[Header], Awaitable[None]]:
    """A FastAPI dependency: a bearer token of any of `scopes` (documented in OpenAPI)."""

    async def require(credentials: Header) -> None:
        header = f"Bearer {credentials.credentials}" if credentials else None
        _check_any(scopes, header, basic=False)

    return require


def reader(*scopes: Tokens) -> Callable[[Request], Awaitable[None]]:
    """A FastAPI dependency for read-only pages: bearer, or Basic with the token as password."""

    async def require(request: Request) -> None:
        _check_any(scopes, request.headers.get("authorization"), basic=True)

    return require


def _check_any(scopes: tuple[Tokens, ...], header: str | None, *, basic: bool) -> None:
    configured = [scope for scope in scopes if scope]
    if not configured:
        scopes[0].check(header, basic=basic)  # the 403 saying no credential is set
    token = presented(header, basic=basic)
    if token is not None and any(scope.allows(token) for scope in configured):
        return
    configured[0].check(header, basic=basic)  # raises the 401 that fits


def local_token(path: Path) -> str:
    """The token in `path`, made (random, mode 0600) the first time: the local stack's
    credentials, which its clients (the demo, tests, the operator) read from the same file."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.parent.chmod(0o700)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(secrets.token_urlsafe(32) + "\n")
    return path.read_text().strip()


def _problem(name: str, value: str) -> str | None:
    if not value:
        return f"{name} is not set"
    if value.lower().startswith(EXAMPLE):
        return f"{name} holds the example value {EXAMPLE!r}"
    if len(value) < MIN_LENGTH:
        return f"{name} has {len(value)} characters, {MIN_LENGTH}+ wanted"
    return None


def problems(names: Iterable[str], environ: Mapping[str, str]) -> list[str]:
    """What is wrong with the secrets `names` in `environ`: unset, an example value, short."""
    return [found for name in names if (found := _problem(name, environ.get(name, "")))]


def main(argv: list[str] | None = None) -> int:
    """`python -m services.api.auth check NAME... [--write NAME=PATH]`: compose's first service.
    Exits 1 (naming each) when a secret is unset, an example value or short; else writes the
    secrets that a program reads from a file (Alertmanager's webhook token) and exits 0."""
    parser = argparse.ArgumentParser(prog="python -m services.api.auth", description=main.__doc__)
    parser.add_argument("command", choices=["check"])
    parser.add_argument("names", nargs="+", help="environment variables holding secrets")
    parser.add_argument("--write", action="append", default=[], metavar="NAME=PATH")
    args = parser.parse_args(argv)
    found = problems(args.names, os.environ)
    if found:
        print("refusing to start: " + "; ".join(found) + " (see .env.example)", file=sys.stderr)
        return 1
    for item in args.write:
        name, _, path = item.partition("=")
        target = Path(path)
        target.unlink(missing_ok=True)  # the last up's, read-only
        target.write_text(os.environ[name])
        target.chmod(0o400)
    print(f"secrets checked: {', '.join(args.names)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
