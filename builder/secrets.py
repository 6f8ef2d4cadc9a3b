"""Which Secrets the builder may use, and for what (pure).

A tenant who may create BrokerPlugins may not be allowed to read Secrets; the builder can. So a
``secretRef`` is only honoured when the Secret says it was made for that use, by its type:

- git credentials (``source.git.secretRef``): ``kubernetes.io/basic-auth`` or
  ``kubernetes.io/ssh-auth``;
- registry push (``image.pushSecretRef``): ``kubernetes.io/dockerconfigjson``;
- webhook HMAC (``webhook.secretRef``): any type but ``kubernetes.io/service-account-token``.

The type is fixed when a Secret is created, so nobody can turn an existing Secret (a
ServiceAccount token, an application's password) into git credentials that the builder would
send to a host the tenant chose. A webhook secret is only compared, never sent, so it needs no
special type — but never a ServiceAccount token's. The tenant RBAC in ``manifests/`` adds the
second lock: the builder may ``get`` only the Secrets named in each namespace's Role.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum

from builder.errors import SecretRefused

SERVICE_ACCOUNT_TOKEN = "kubernetes.io/service-account-token"  # noqa: S105 - a type name


class Use(Enum):
    GIT = "source.git.secretRef"
    PUSH = "image.pushSecretRef"
    WEBHOOK = "webhook.secretRef"


ACCEPTED: dict[Use, tuple[str, ...]] = {
    Use.GIT: ("kubernetes.io/basic-auth", "kubernetes.io/ssh-auth"),
    Use.PUSH: ("kubernetes.io/dockerconfigjson",),
}

_HOW = {
    Use.GIT: "`kubectl create secret generic NAME --type=kubernetes.io/basic-auth "
             "--from-literal=username=U --from-literal=password=TOKEN` (or "
             "--type=kubernetes.io/ssh-auth with ssh-privatekey and known_hosts)",
    Use.PUSH: "`kubectl create secret docker-registry NAME --docker-server=REGISTRY ...`",
    Use.WEBHOOK: "`kubectl create secret generic NAME --from-literal=secret=$(openssl rand "
                 "-hex 32)`",
}


@dataclass(frozen=True)
class Secret:
    """A Secret as the builder sees it: its type and decoded data (never logged)."""

    namespace: str
    name: str
    type: str
    data: Mapping[str, bytes] = field(repr=False)


def check_use(secret: Secret, use: Use) -> Mapping[str, bytes]:
    """The Secret's data if ``secret`` may be used for ``use``; else ``SecretRefused`` naming
    the rule."""
    where = f"Secret {secret.namespace}/{secret.name} ({use.value})"
    if secret.type == SERVICE_ACCOUNT_TOKEN:
        raise SecretRefused(
            f"{where} is a ServiceAccount token (type {SERVICE_ACCOUNT_TOKEN}); the builder "
            "never uses those: create a Secret of its own for this")
    accepted = ACCEPTED.get(use)
    if accepted is not None and secret.type not in accepted:
        raise SecretRefused(
            f"{where} has type {secret.type or 'Opaque'!r}; the builder only uses a Secret of "
            f"type {' or '.join(accepted)} for {use.value}, so a Secret made for something "
            f"else is never sent to a Git host or registry. Create one: {_HOW[use]}")
    return secret.data


MIN_WEBHOOK_SECRET = 16
"""Bytes; ``openssl rand -hex 32`` gives 64."""


def webhook_secret_problem(value: bytes | None) -> tuple[str, str] | None:
    """(reason, message) if ``value`` must not verify deliveries: missing, a placeholder as
    shipped in examples (anyone can read it, so anyone could sign with it), or too short."""
    if not value or not value.strip():
        return "WebhookSecretMissing", "the webhook Secret's key is missing or empty"
    text = value.decode("utf-8", "replace").strip()
    if "replace-me" in text.lower() or "changeme" in text.lower().replace("-", ""):
        return ("WebhookSecretPlaceholder",
                "the webhook Secret holds a placeholder from an example, which anyone can read "
                "and sign with; set a random value: openssl rand -hex 32")
    if len(value) < MIN_WEBHOOK_SECRET:
        return ("WebhookSecretTooShort",
                f"the webhook secret has {len(value)} bytes, fewer than {MIN_WEBHOOK_SECRET}; "
                "set a random value: openssl rand -hex 32")
    return None
