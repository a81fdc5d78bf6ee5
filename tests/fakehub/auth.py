"""Users and tokens known to the emulator, and who may read or write which namespace."""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field


@dataclass(frozen=True)
class User:
    """A Hub user. ``role`` is the token's role ("read" or "write"); ``oauth`` marks an OAuth-type token."""

    name: str
    token: str
    role: str = "write"
    orgs: tuple[str, ...] = ()
    oauth: bool = False

    @property
    def id(self) -> str:
        return hashlib.sha1(f"user:{self.name}".encode()).hexdigest()[:24]

    def can_read(self, namespace: str) -> bool:
        return namespace == self.name or namespace in self.orgs

    def can_write(self, namespace: str) -> bool:
        return self.role in ("write", "admin") and self.can_read(namespace)

    def whoami(self) -> dict:
        """The ``/api/whoami-v2`` answer for this user's token."""
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
            "auth": {
                "type": "oauth" if self.oauth else "access_token",
                "accessToken": {"displayName": f"{self.name}-token", "role": self.role},
            },
        }


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
