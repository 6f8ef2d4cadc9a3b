"""One rule for what ``source.git.ref`` names, shared by the resolver and the webhook matcher.

- A full ref (``refs/heads/main``, ``refs/tags/v1.2``) names exactly itself.
- A short name (``main``, ``v1.2``) is the branch ``refs/heads/<name>`` if the repository has
  one, the tag ``refs/tags/<name>`` if it has only that, and an error if it has both (say which
  one: a tag named like a branch could otherwise move a plugin off its branch) or neither.

Statuses record the full ref the build resolved. A push can only move what a ref resolves to
by updating one of its candidates, so the webhook path matches those, and only pokes the
plugin: the builder resolves the ref itself with this same rule.
"""

from __future__ import annotations

from collections.abc import Iterable

from builder.errors import AmbiguousRef, UnknownRef

HEADS = "refs/heads/"
TAGS = "refs/tags/"


def candidates(ref: str) -> tuple[str, ...]:
    """The full refs ``ref`` may resolve to, in order of preference."""
    if ref.startswith("refs/"):
        return (ref,)
    return (HEADS + ref, TAGS + ref)


def qualify(ref: str, advertised: Iterable[str], where: str) -> str:
    """The full ref ``ref`` names among the refs a repository ``advertised``."""
    found = [c for c in candidates(ref) if c in set(advertised)]
    if len(found) > 1:
        raise AmbiguousRef(
            f"source.git.ref {ref!r} is ambiguous in {where}: both {found[0]} and {found[1]} "
            f"exist; name one in full (ref: {found[0]} or ref: {found[1]})")
    if not found:
        raise UnknownRef(
            f"source.git.ref {ref!r}: {where} has no {' and no '.join(candidates(ref))}; "
            "check source.git.ref")
    return found[0]


def moves(followed: str, pushed: str) -> bool:
    """Can a push to ``pushed`` (a full ref) change what ``followed`` resolves to?"""
    return pushed in candidates(followed)
