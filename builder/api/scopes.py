"""Which namespaces an API token may act in (pure).

The token file names each caller ``NAME@SCOPE:TOKEN`` (``plugforge.grpc_auth`` reads it; a
client's copy of the line works unchanged): ``alice@team-a,team-b`` may trigger builds and
read builds, logs and rollouts in those two namespaces only; ``admin@*`` in every namespace.
A token without ``@SCOPE`` may act in no namespace: an old token file fails closed, and every
refusal says how to scope the line. Each call is checked before the apiserver is asked.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from builder.errors import Forbidden

ALL = "*"
_NAMESPACE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


class OutOfScope(Forbidden):
    """The caller's token is not scoped to the namespace (gRPC PERMISSION_DENIED)."""

    reason = "OutOfScope"


@dataclass(frozen=True)
class Caller:
    user: str
    namespaces: frozenset[str]
    """The namespaces this caller may act in; ``{"*"}`` for all."""

    def check(self, namespace: str) -> None:
        if ALL in self.namespaces or namespace in self.namespaces:
            return
        if not self.namespaces:
            raise OutOfScope(
                f"token {self.user!r} may act in no namespace, so not in {namespace!r}: its line "
                f"in --grpc-token-file has no scope; write it as {self.user}@{namespace}:TOKEN "
                f"(or {self.user}@*:TOKEN for every namespace)")
        raise OutOfScope(
            f"token {self.user!r} may not act in namespace {namespace!r}; it may act in "
            f"{', '.join(sorted(self.namespaces))}")


def parse_caller(name: str) -> Caller:
    """``alice@team-a,team-b`` → alice in those namespaces; ``alice`` → in none."""
    user, sep, scope = name.partition("@")
    if not sep:
        return Caller(user, frozenset())
    namespaces = frozenset(n.strip() for n in scope.split(",") if n.strip())
    bad = sorted(n for n in namespaces if n != ALL and not _NAMESPACE.match(n))
    if bad or not namespaces:
        raise ValueError(f"token {user!r}: scope {scope!r} must be '*' or namespace names "
                         f"separated by commas{f'; not a namespace name: {bad}' if bad else ''}")
    return Caller(user, namespaces)
