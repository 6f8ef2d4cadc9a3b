"""``plugforge signing-keys``: the builder's signing key pair and the sidecars' trust policy.

- ``<system>/plugforge-signing-key`` (Secret): ``cosign.key`` (ECDSA P-256, encrypted the way
  ``cosign generate-key-pair`` does), ``cosign.password`` (random), ``cosign.pub`` — the same
  keys ``cosign generate-key-pair k8s://NS/NAME`` writes, so cosign can use the Secret too.
- ``<broker ns>/plugforge-trust`` (ConfigMap) per broker namespace: ``policy.yaml``, the trust
  policy the sidecars mount (``--source``/``--ref`` globs restrict the provenance).

Keeps what exists, but adds the current public key to a policy that lacks it. Rotation
(manifests/README.md): ``--rotate`` makes a new key pair (the old one is kept as
``plugforge-signing-key-previous``) and adds its public key to every policy, so both keys are
trusted; when every pod runs images signed by the new key, ``--drop-key KEY_ID`` removes the
old one. ``cosign.pub`` is also written to ``--out-dir``. The private key never leaves the
Secret.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import secrets
from pathlib import Path
from typing import Any

import yaml

from plugforge.cli import _common as c
from plugforge.signing import (
    VerificationFailed,
    encrypt_private_key,
    generate,
    load_public_keys,
    parse_policy,
    render_policy,
)

KEY_SECRET = "plugforge-signing-key"  # noqa: S105 - names of Secrets, not secrets
PREVIOUS_SECRET = "plugforge-signing-key-previous"  # noqa: S105
TRUST_CONFIGMAP = "plugforge-trust"
POLICY_KEY = "policy.yaml"
LABELS = {"app.kubernetes.io/part-of": "plugforge",
          "app.kubernetes.io/managed-by": "plugforge-signing-keys"}


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    p = subparsers.add_parser(
        "signing-keys", help="create the image signing key Secret and the sidecars' trust "
                             "policy ConfigMaps (rotate, drop a key)",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_kubeconfig_flags(p)
    p.add_argument("--system-namespace", default="plugforge-system",
                   help="the builder's namespace (default %(default)s)")
    p.add_argument("--broker-namespace", action="append", default=[], metavar="NS",
                   help="a namespace with broker pods (repeat; default: default)")
    p.add_argument("--source", action="append", default=[], metavar="GLOB",
                   help="new policies: allowed source repository URLs (repeat)")
    p.add_argument("--ref", action="append", default=[], metavar="GLOB",
                   help="new policies: allowed refs, e.g. refs/heads/main (repeat)")
    change = p.add_mutually_exclusive_group()
    change.add_argument("--rotate", action="store_true",
                        help="new key pair for the builder; policies trust old and new")
    change.add_argument("--drop-key", metavar="KEY_ID",
                        help="remove this key (sha256:...) from every policy")
    p.add_argument("--out-dir", type=Path, default=Path("plugforge-signing"),
                   help="where to write cosign.pub (default ./%(default)s)")
    p.set_defaults(run=lambda args: c.run_safely(run, args))


def _new_key_pair() -> dict[str, bytes]:
    key = generate()
    password = secrets.token_urlsafe(24).encode()
    return {"cosign.key": encrypt_private_key(key, password), "cosign.password": password,
            "cosign.pub": key.public.pem()}


def run(args: argparse.Namespace) -> int:
    store = _Store(args.kubeconfig, args.context)
    system = args.system_namespace
    pair = store.get_secret(system, KEY_SECRET)
    if pair is None:
        pair = _new_key_pair()
        store.put_secret(system, KEY_SECRET, pair, create=True)
    elif args.rotate:
        store.put_secret(system, PREVIOUS_SECRET, pair,
                         create=store.get_secret(system, PREVIOUS_SECRET) is None)
        pair = _new_key_pair()
        store.put_secret(system, KEY_SECRET, pair, create=False)
        print(f"rotated: restart the builder to sign with the new key "
              f"(kubectl -n {system} rollout restart deployment/plugforge-builder)")
    else:
        print(f"kept    secret {system}/{KEY_SECRET}")
    (public,) = load_public_keys(pair["cosign.pub"], f"{system}/{KEY_SECRET} cosign.pub")
    if args.drop_key == public.key_id:
        raise c.CliError(f"{args.drop_key} is the builder's current key; rotate first",
                         c.EXIT_USAGE)
    name = f"plugforge-{dt.datetime.now(dt.UTC):%Y%m%d}-{public.key_id[7:15]}"
    for namespace in args.broker_namespace or ["default"]:
        text = store.get_configmap(namespace, TRUST_CONFIGMAP)
        if text is None:
            policy = render_policy([(name, public.pem())], sources=args.source, refs=args.ref)
            store.put_configmap(namespace, policy, create=True)
            continue
        updated = _updated_policy(text, name, public.pem(), args.drop_key,
                                  f"{namespace}/{TRUST_CONFIGMAP}")
        if updated == text:
            print(f"kept    configmap {namespace}/{TRUST_CONFIGMAP}")
        else:
            store.put_configmap(namespace, updated, create=False)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "cosign.pub").write_bytes(public.pem())
    print(f"wrote   {args.out_dir}/cosign.pub (key {public.key_id}); check an image with:\n"
          f"  plugforge verify IMAGE@DIGEST --key {args.out_dir}/cosign.pub")
    return c.EXIT_OK


def _updated_policy(text: str, name: str, pem: bytes, drop: str | None, where: str) -> str:
    try:
        policy = parse_policy(text.encode(), where)
    except VerificationFailed as e:
        raise c.CliError(f"{e}; fix or delete it, then run this again") from e
    doc: dict[str, Any] = yaml.safe_load(text)
    ids = [entry.key.key_id for entry in policy.keys]
    if drop is not None:
        if drop not in ids:
            return text
        kept = [raw for raw in doc["keys"] if drop not in
                {k.key_id for k in load_public_keys(raw["publicKey"].encode())}]
        if not kept:
            raise c.CliError(f"{where}: {drop} is its only key", c.EXIT_USAGE)
        doc["keys"] = kept
    elif load_public_keys(pem)[0].key_id not in ids:
        doc["keys"].append({"name": name, "publicKey": pem.decode()})
    else:
        return text
    return yaml.safe_dump(doc, sort_keys=False)


class _Store:
    """Secrets and the trust ConfigMap; every API failure becomes a one-line CliError."""

    def __init__(self, kubeconfig: Path | None, context: str | None) -> None:
        from kubernetes import client

        self._core = client.CoreV1Api(c.kube_api_client(kubeconfig, context))

    def _call(self, what: str, fn: Any) -> Any:
        from kubernetes.client.exceptions import ApiException

        try:
            return fn()
        except ApiException as e:
            if e.status == 404:
                return None
            hint = ": run this as a cluster admin" if e.status == 403 else ""
            raise c.CliError(f"{what}: HTTP {e.status} {e.reason}{hint}") from e
        except OSError as e:
            raise c.CliError(f"{what}: apiserver unreachable: {e}") from e

    def get_secret(self, namespace: str, name: str) -> dict[str, bytes] | None:
        found = self._call(f"get secret {namespace}/{name}",
                           lambda: self._core.read_namespaced_secret(name, namespace))
        if found is None:
            return None
        return {k: base64.b64decode(v) for k, v in (found.data or {}).items()}

    def put_secret(self, namespace: str, name: str, data: dict[str, bytes], *,
                   create: bool) -> None:
        body: Any = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                "metadata": {"name": name, "labels": LABELS},
                "data": {k: base64.b64encode(v).decode() for k, v in data.items()}}
        verb = "create" if create else "replace"
        done = self._call(f"{verb} secret {namespace}/{name}", lambda: (
            self._core.create_namespaced_secret(namespace, body) if create
            else self._core.replace_namespaced_secret(name, namespace, body)))
        if done is None:
            raise c.CliError(f"namespace {namespace!r} does not exist: create it and run this "
                             "again")
        print(f"{'created' if create else 'updated'} secret {namespace}/{name}")

    def get_configmap(self, namespace: str, name: str = TRUST_CONFIGMAP) -> str | None:
        found = self._call(f"get configmap {namespace}/{name}",
                           lambda: self._core.read_namespaced_config_map(name, namespace))
        return None if found is None else str((found.data or {}).get(POLICY_KEY, ""))

    def put_configmap(self, namespace: str, policy: str, *, create: bool) -> None:
        body: Any = {"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": TRUST_CONFIGMAP, "labels": LABELS},
                "data": {POLICY_KEY: policy}}
        verb = "create" if create else "replace"
        done = self._call(f"{verb} configmap {namespace}/{TRUST_CONFIGMAP}", lambda: (
            self._core.create_namespaced_config_map(namespace, body) if create
            else self._core.replace_namespaced_config_map(TRUST_CONFIGMAP, namespace, body)))
        if done is None:
            raise c.CliError(f"namespace {namespace!r} does not exist: create it and run this "
                             "again")
        print(f"{'created' if create else 'updated'} configmap {namespace}/{TRUST_CONFIGMAP}")
