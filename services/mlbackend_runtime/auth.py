"""Bearer-token authentication and role-based authorization.

Tokens live in a file the operator manages, one per line::

    # token-or-digest                 role    identity
    0b7f...e1                         admin   alice
    sha256:9f86d081884c7d65...        reader  dashboards

A line may give the token itself or ``sha256:<hex>`` of it, so the file need not hold
secrets in the clear. The file is re-read when it changes (checked at most every few
seconds), so tokens rotate without a restart.

Each RPC's required role is declared in the contract with the
``mlbackend.common.v1.required_role`` method option and read from the descriptors here;
a method with no declaration needs ``admin`` (fail closed).
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import hmac
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import descriptor_pool
from google.protobuf.descriptor import ServiceDescriptor

from mlbackend_runtime import errors

# Methods every caller may use without a token: probes and tooling must work.
OPEN_SERVICES = frozenset(
    {
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    }
)


class Role(enum.IntEnum):
    """Ordered roles: a higher role may do everything a lower one may."""

    READER = 1
    WRITER = 2
    ADMIN = 3

    @classmethod
    def parse(cls, text: str) -> Role:
        try:
            return cls[text.strip().upper()]
        except KeyError:
            names = ", ".join(r.name.lower() for r in cls)
            raise ValueError(f"unknown role {text!r} (expected one of {names})") from None


@dataclass(frozen=True)
class Principal:
    """An authenticated caller."""

    identity: str
    role: Role


ANONYMOUS = Principal(identity="anonymous", role=Role.ADMIN)
"""The caller when auth is off (loopback only): may do everything, recorded as anonymous."""


class TokenFileError(ValueError):
    """The token file cannot be used; the message names the line."""


def parse_token_file(text: str, source: str = "token file") -> dict[str, Principal]:
    """Map sha256 hex digests of tokens to principals."""
    principals: dict[str, Principal] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) not in (2, 3):
            raise TokenFileError(f"{source}:{number}: expected 'TOKEN ROLE [IDENTITY]'")
        secret, role_text = parts[0], parts[1]
        try:
            role = Role.parse(role_text)
        except ValueError as exc:
            raise TokenFileError(f"{source}:{number}: {exc}") from None
        if secret.startswith("sha256:"):
            digest = secret.removeprefix("sha256:").lower()
            if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                raise TokenFileError(f"{source}:{number}: sha256 digest must be 64 hex digits")
        else:
            if len(secret) < 16:
                raise TokenFileError(f"{source}:{number}: token shorter than 16 characters")
            digest = _digest(secret)
        identity = parts[2] if len(parts) == 3 else f"token-{digest[:8]}"
        principals[digest] = Principal(identity=identity, role=role)
    if not principals:
        raise TokenFileError(f"{source}: no tokens")
    return principals


class TokenStore:
    """Tokens from a file, reloaded when the file changes (checked every
    ``RECHECK_SECONDS``); ``generation`` counts the loads."""

    RECHECK_SECONDS = 5.0

    def __init__(self, path: Path) -> None:
        self._path = path
        self._mtime_ns = -1
        self._checked_at = 0.0
        self._principals: dict[str, Principal] = {}
        self.generation = 0
        self._reload()

    def _reload(self) -> None:
        stat = os.stat(self._path)
        if stat.st_mtime_ns != self._mtime_ns:
            self._principals = parse_token_file(self._path.read_text(), str(self._path))
            self._mtime_ns = stat.st_mtime_ns
            self.generation += 1

    def refresh(self) -> int:
        """Reload the file if it is time to look and it changed; the generation now."""
        now = time.monotonic()
        if now - self._checked_at > self.RECHECK_SECONDS:
            self._checked_at = now
            # A broken edit keeps the last good tokens rather than locking everyone out.
            with contextlib.suppress(OSError, TokenFileError):
                self._reload()
        return self.generation

    def lookup(self, token: str) -> Principal | None:
        self.refresh()
        digest = _digest(token)
        for known, principal in self._principals.items():
            if hmac.compare_digest(known, digest):
                return principal
        return None


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def roles_from_descriptors(
    service_names: Iterable[str],
    overrides: Mapping[str, Role] | None = None,
) -> dict[str, Role]:
    """Required role per full method path (``/pkg.Service/Method``).

    Read from the ``required_role`` option in the default descriptor pool; ``overrides``
    (full paths) cover services whose protos cannot carry the option (the OIP v2 file).
    """
    from mlbackend.common.v1 import options_pb2

    pool = descriptor_pool.Default()
    roles: dict[str, Role] = {}
    for name in service_names:
        if name in OPEN_SERVICES:
            continue
        service: ServiceDescriptor = pool.FindServiceByName(name)
        for method in service.methods:
            declared = method.GetOptions().Extensions[options_pb2.required_role]
            role = Role(declared) if declared else Role.ADMIN
            roles[f"/{service.full_name}/{method.name}"] = role
    roles.update(overrides or {})
    return roles


class Authenticator:
    """Decides who a call comes from and whether it may proceed."""

    def __init__(self, tokens: TokenStore | None, roles: Mapping[str, Role]) -> None:
        self._tokens = tokens
        self._roles = dict(roles)

    @property
    def enabled(self) -> bool:
        return self._tokens is not None

    def generation(self) -> int:
        """Changes when the tokens do (0 with auth off): a caller authorized under one
        generation needs authorizing again under the next."""
        return 0 if self._tokens is None else self._tokens.refresh()

    def authorize(self, method: str, authorization: str | None) -> Principal:
        """The caller of ``method`` given its ``authorization`` metadata, or a domain error."""
        return self.require(self._roles.get(method, Role.ADMIN), authorization, method)

    def require(self, needed: Role, authorization: str | None, what: str) -> Principal:
        """The caller given its ``authorization`` header, if its role reaches ``needed``
        (``what`` names the operation in the refusal); else a domain error."""
        if self._tokens is None:
            return ANONYMOUS
        if not authorization:
            raise errors.Unauthenticated("missing bearer token (metadata 'authorization')")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise errors.Unauthenticated("authorization must be 'Bearer <token>'")
        principal = self._tokens.lookup(token.strip())
        if principal is None:
            raise errors.Unauthenticated("invalid bearer token")
        if principal.role < needed:
            raise errors.PermissionDenied(
                f"{what} needs role {needed.name.lower()}; "
                f"{principal.identity} has {principal.role.name.lower()}"
            )
        return principal
