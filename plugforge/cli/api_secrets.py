"""``plugforge api-secrets``: the TLS certificates and tokens of plugforge's gRPC APIs, as Secrets.

Creates what the manifests mount, once, and keeps what exists (run it again for a new broker
namespace; delete a Secret and run it again to rotate it):

- ``<system>/plugforge-api-ca``: the private CA (``ca.crt``, ``ca.key``). Only this command
  reads it, to sign the others.
- ``<system>/plugforge-builder-grpc``: the builder's serving certificate (``tls.crt``,
  ``tls.key``, valid for the ``plugforge-builder`` Service and ``localhost`` for
  ``kubectl port-forward``), ``ca.crt``, ``api-tokens`` (``NAME:TOKEN`` per caller; one
  ``admin`` token) and ``sidecar-token`` (what the builder presents to sidecars).
- ``<broker ns>/plugforge-sidecar-grpc`` per broker namespace: the sidecars' serving
  certificate (valid for ``*.<ns>.svc`` and the pod names you add with ``--sidecar-host``,
  e.g. ``*.vernemq-headless.<ns>.svc``), ``ca.crt`` and ``tokens`` (the builder's token).

The admin token and CA are also written to ``--out-dir`` (mode 0600) for the CLI's
``--token-file``/``--ca-file``. Tokens never reach stdout.
"""

from __future__ import annotations

import argparse
import base64
import secrets
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from plugforge import pki
from plugforge.cli import _common as c

# Names of Secrets, not secrets.
CA_SECRET = "plugforge-api-ca"  # noqa: S105
BUILDER_SECRET = "plugforge-builder-grpc"  # noqa: S105
SIDECAR_SECRET = "plugforge-sidecar-grpc"  # noqa: S105
BUILDER_SERVICE = "plugforge-builder"
LABELS = {"app.kubernetes.io/part-of": "plugforge",
          "app.kubernetes.io/managed-by": "plugforge-api-secrets"}


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    p = subparsers.add_parser(
        "api-secrets", help="create the gRPC APIs' certificates and tokens as Secrets",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_kubeconfig_flags(p)
    p.add_argument("--system-namespace", default="plugforge-system",
                   help="the builder's namespace (default %(default)s)")
    p.add_argument("--broker-namespace", action="append", default=[], metavar="NS",
                   help="a namespace with broker pods and sidecars (repeat; default: default)")
    p.add_argument("--builder-host", action="append", default=[], metavar="NAME",
                   help="another name or IP the builder is reached by, e.g. its Ingress host")
    p.add_argument("--sidecar-host", action="append", default=[], metavar="NAME",
                   help="another name sidecars are dialled by, e.g. *.vernemq-headless.NS.svc")
    p.add_argument("--out-dir", type=Path, default=Path("plugforge-api"),
                   help="where to write the admin token and the CA (default ./%(default)s)")
    p.set_defaults(run=lambda args: c.run_safely(run, args))


def builder_names(namespace: str, extra: Sequence[str]) -> list[str]:
    svc = f"{BUILDER_SERVICE}.{namespace}"
    return [BUILDER_SERVICE, svc, f"{svc}.svc", f"{svc}.svc.cluster.local", "localhost",
            *extra]


def sidecar_names(namespace: str, extra: Sequence[str]) -> list[str]:
    return [f"*.{namespace}.svc", f"*.{namespace}.svc.cluster.local", *extra]


def run(args: argparse.Namespace) -> int:
    try:
        return _ensure(args)
    except pki.PkiError as e:
        raise c.CliError(str(e)) from e


def _ensure(args: argparse.Namespace) -> int:
    # Refuse bad names before anything is created.
    for names in (builder_names(args.system_namespace, args.builder_host),
                  sidecar_names("x", args.sidecar_host)):
        try:
            pki.subject_alt_names(names)
        except pki.PkiError as e:
            raise c.CliError(str(e), c.EXIT_USAGE) from e
    store = _SecretStore(args.kubeconfig, args.context)
    system = args.system_namespace
    ca_data = store.get(system, CA_SECRET)
    if ca_data is None:
        ca = pki.new_ca("plugforge-api-ca")
        store.create(system, CA_SECRET, {"ca.crt": ca.cert, "ca.key": ca.key})
    else:
        ca = pki.Pem(ca_data["ca.crt"], ca_data["ca.key"])
        print(f"kept    secret {system}/{CA_SECRET}")
    builder = store.get(system, BUILDER_SECRET)
    if builder is None:
        leaf = pki.issue(ca, BUILDER_SERVICE, builder_names(system, args.builder_host))
        builder = {"tls.crt": leaf.cert, "tls.key": leaf.key, "ca.crt": ca.cert,
                   # admin may act in every namespace (builder/api/scopes.py); add
                   # NAME@NS1,NS2:TOKEN lines for callers that may act in some only.
                   "api-tokens": f"admin@*:{_token()}\n".encode(),
                   "sidecar-token": _token().encode()}
        store.create(system, BUILDER_SECRET, builder)
    else:
        print(f"kept    secret {system}/{BUILDER_SECRET}")
    for namespace in args.broker_namespace or ["default"]:
        if store.get(namespace, SIDECAR_SECRET) is not None:
            print(f"kept    secret {namespace}/{SIDECAR_SECRET}")
            continue
        leaf = pki.issue(ca, "plugforge-sidecar", sidecar_names(namespace, args.sidecar_host))
        store.create(namespace, SIDECAR_SECRET, {
            "tls.crt": leaf.cert, "tls.key": leaf.key, "ca.crt": ca.cert,
            "tokens": b"builder:" + builder["sidecar-token"].strip() + b"\n"})
    admin = next((line for line in builder["api-tokens"].decode().splitlines()
                  if line.startswith(("admin@", "admin:"))), None)
    if admin is None:
        raise c.CliError(f"secret {system}/{BUILDER_SECRET} has no admin: line in api-tokens")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    pki.write_private(args.out_dir / "token", admin.encode() + b"\n")
    pki.write_private(args.out_dir / "ca.crt", builder["ca.crt"])
    print(f"wrote   {args.out_dir}/token and {args.out_dir}/ca.crt; use them with:\n"
          f"  export PLUGFORGE_TOKEN_FILE={args.out_dir.resolve()}/token "
          f"PLUGFORGE_CA_FILE={args.out_dir.resolve()}/ca.crt "
          "PLUGFORGE_BUILDER=localhost:9443\n"
          f"  kubectl -n {system} port-forward svc/{BUILDER_SERVICE} 9443:grpc")
    return c.EXIT_OK


def _token() -> str:
    return secrets.token_urlsafe(32)


class _SecretStore:
    """Get and create Secrets; every API failure becomes a one-line CliError."""

    def __init__(self, kubeconfig: Path | None, context: str | None) -> None:
        from kubernetes import client

        self._core = client.CoreV1Api(c.kube_api_client(kubeconfig, context))

    def get(self, namespace: str, name: str) -> dict[str, bytes] | None:
        from kubernetes.client.exceptions import ApiException

        try:
            secret = self._core.read_namespaced_secret(name, namespace)
        except ApiException as e:
            if e.status == 404:
                return None
            raise c.CliError(_explain(e, "get", namespace, name)) from e
        except OSError as e:
            raise c.CliError(f"apiserver unreachable: {e}") from e
        return {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}

    def create(self, namespace: str, name: str, data: Mapping[str, bytes]) -> None:
        from kubernetes.client.exceptions import ApiException

        body: Any = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                "metadata": {"name": name, "labels": LABELS},
                "data": {k: base64.b64encode(v).decode() for k, v in data.items()}}
        try:
            self._core.create_namespaced_secret(namespace, body)
        except ApiException as e:
            raise c.CliError(_explain(e, "create", namespace, name)) from e
        except OSError as e:
            raise c.CliError(f"apiserver unreachable: {e}") from e
        print(f"created secret {namespace}/{name}")


def _explain(e: Any, verb: str, namespace: str, name: str) -> str:
    if e.status == 404:
        return (f"namespace {namespace!r} does not exist: create it (the builder's comes "
                "with manifests/) and run this again")
    if e.status == 403:
        return f"forbidden to {verb} secret {namespace}/{name}: run this as a cluster admin"
    return f"{verb} secret {namespace}/{name}: HTTP {e.status} {e.reason}"
