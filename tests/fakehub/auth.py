"""Users and tokens known to the emulator, and who may read or write which namespace and repo.

OAuth tokens (``User.oauth``) carry ``scopes`` and an ``expires_at``, and belong to one OAuth app (``app``). The
scopes follow hub-docs ``oauth.md`` (PR #2014, 2025-10): ``read-repos`` reads the user's personal repos,
``write-repos`` reads and writes them, ``manage-repos`` also creates and deletes them, ``contribute-repos`` creates
repos and reaches only the repos created by this app, ``jobs`` runs Jobs. Repos are the user's own namespace and
the orgs the token lists (the consent screen's org grants are not modelled). Assumed, not verified: that a
``contribute-repos`` token has full (read, write, delete) access to the repos its app created.
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass, field

# What ``add_user(..., oauth=True)`` grants when no scopes are given: everything the token could do before scopes
# were modelled (repos of its namespaces, Jobs), so older tests keep their meaning.
LEGACY_OAUTH_SCOPES = frozenset({"openid", "profile", "manage-repos", "jobs"})
READ_SCOPES = frozenset({"read-repos", "write-repos", "manage-repos"})
WRITE_SCOPES = frozenset({"write-repos", "manage-repos"})
CREATE_SCOPES = frozenset({"contribute-repos", "manage-repos"})
DEFAULT_OAUTH_APP = "fakehub-oauth-app"


@dataclass(frozen=True)
class User:
    """A Hub user's token. ``role`` is the token's role ("read" or "write"); ``oauth`` marks an OAuth-type token,
    then ``scopes`` (None: ``LEGACY_OAUTH_SCOPES``), ``expires_at`` (unix seconds, None: never) and ``app`` (the
    OAuth app that issued it) apply."""

    name: str
    token: str = field(repr=False)
    role: str = "write"
    orgs: tuple[str, ...] = ()
    oauth: bool = False
    scopes: frozenset[str] | None = None
    expires_at: float | None = None
    app: str | None = None

    @property
    def id(self) -> str:
        return hashlib.sha1(f"user:{self.name}".encode()).hexdigest()[:24]

    @property
    def granted(self) -> frozenset[str]:
        """The OAuth scopes in force (empty for other tokens, which scopes do not limit)."""
        if not self.oauth:
            return frozenset()
        return LEGACY_OAUTH_SCOPES if self.scopes is None else frozenset(self.scopes)

    @property
    def oauth_app(self) -> str | None:
        return (self.app or DEFAULT_OAUTH_APP) if self.oauth else None

    def expired(self, now: float | None = None) -> bool:
        return self.expires_at is not None and (time.time() if now is None else now) >= self.expires_at

    def can_read(self, namespace: str) -> bool:
        """Whether ``namespace`` is this token's user or one of its orgs (scopes aside)."""
        return namespace == self.name or namespace in self.orgs

    def can_write(self, namespace: str) -> bool:
        """Whether the token may write in ``namespace`` at all (role and namespace; scopes: see ``can_write_repo``)."""
        return self.role in ("write", "admin") and self.can_read(namespace)

    def can_read_repo(self, namespace: str, created_by_app: str | None) -> bool:
        """Read a private repo of ``namespace`` created by ``created_by_app`` (None: not through OAuth)."""
        if not self.can_read(namespace):
            return False
        return not self.oauth or bool(self.granted & READ_SCOPES) or self._app_repo(created_by_app)

    def can_write_repo(self, namespace: str, created_by_app: str | None) -> bool:
        """Write (commit, branch, settings, delete) a repo of ``namespace`` created by ``created_by_app``."""
        if not self.can_write(namespace):
            return False
        return not self.oauth or bool(self.granted & WRITE_SCOPES) or self._app_repo(created_by_app)

    def can_create_repo(self, namespace: str) -> bool:
        if not self.can_write(namespace):
            return False
        return not self.oauth or bool(self.granted & CREATE_SCOPES)

    def can_use_jobs(self) -> bool:
        """OAuth tokens need the ``jobs`` scope for every Jobs route; other tokens are not limited by scopes."""
        return not self.oauth or "jobs" in self.granted

    def _app_repo(self, created_by_app: str | None) -> bool:
        return "contribute-repos" in self.granted and created_by_app is not None and created_by_app == self.oauth_app

    def whoami(self) -> dict:
        """The ``/api/whoami-v2`` answer for this user's token.

        Access tokens: ``auth = {type: "access_token", accessToken: {displayName, role}}`` (huggingface.js
        ``who-am-i.ts``, AuthInfo). OAuth tokens: the real answer is not documented. Known: it has no
        ``accessToken`` (huggingface_hub PR #2631: ``KeyError: 'accessToken'`` for an OAuth token), and
        huggingface.js's AuthInfo has an optional ``expiresAt`` date beside ``type`` (hub-docs issue #2114 says
        ``auth.expiresAt`` is in the OpenAPI docs). Chosen here: ``type: "oauth"`` (what scheduler/diagnostics.py
        already expects; not in huggingface.js's AuthType list), ``expiresAt`` as an ISO-8601 date, and the
        granted scopes as ``scope``, a space-separated string as the OAuth token endpoint returns them (RFC 6749
        §5.1; ``huggingface_hub.OAuthInfo.scope``, ``gr.OAuthToken.scope``). Code that reads a visitor's scopes
        should prefer the sign-in's own ``scope`` and treat whoami's as a fallback.
        """
        if self.oauth:
            auth: dict = {"type": "oauth", "scope": " ".join(sorted(self.granted))}
            if self.expires_at is not None:
                auth["expiresAt"] = _iso(self.expires_at)
        else:
            auth = {"type": "access_token", "accessToken": {"displayName": f"{self.name}-token", "role": self.role}}
        return {
            "type": "user",
            "id": self.id,
            "name": self.name,
            "fullname": self.name.capitalize(),
            "email": f"{self.name}@example.invalid",
            "emailVerified": True,
            "isPro": False,
            "canPay": True,
            "avatarUrl": "",
            "orgs": [
                {"type": "org", "id": hashlib.sha1(f"org:{o}".encode()).hexdigest()[:24], "name": o, "fullname": o}
                for o in self.orgs
            ],
            "auth": auth,
        }


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d}Z"


@dataclass
class Users:
    """Token -> user registry (thread-safe)."""

    _by_token: dict[str, User] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, user: User) -> None:
        with self._lock:
            self._by_token[user.token] = user

    def by_token(self, token: str) -> User | None:
        with self._lock:
            return self._by_token.get(token)

    def by_name(self, name: str) -> User | None:
        with self._lock:
            return next((u for u in self._by_token.values() if u.name == name), None)
