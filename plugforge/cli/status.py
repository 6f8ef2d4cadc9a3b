"""``plugforge status``: one line per BrokerPlugin (Built, Ready, pods), read from the apiserver.

Reads BrokerPlugins directly with your kubeconfig, like kubectl: ``--kubeconfig``,
``--context``, ``-n``/``--all-namespaces``.
"""

from __future__ import annotations

import argparse
from typing import Any

from plugforge.cli import _common as c

GROUP, VERSION, PLURAL = "plugforge.dev", "v1alpha1", "brokerplugins"


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    p = subparsers.add_parser(
        "status", help="one line per plugin: built, ready, pods",
        description="List BrokerPlugins with their Built and Ready conditions and how many "
                    "broker pods run the current release. Reads the Kubernetes API with your "
                    "kubeconfig. Exit 0 when listed (whatever their state), 1 when the API "
                    "refused or failed.")
    c.add_kubeconfig_flags(p)
    c.add_namespace_flag(p)
    p.add_argument("-A", "--all-namespaces", action="store_true",
                   help="plugins of every namespace")
    c.add_output_flag(p)
    p.set_defaults(run=lambda args: c.run_safely(run, args))


def _condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    conditions = c.pick(obj, "status", "conditions") or []
    return next((x for x in conditions if x.get("type") == type_), {})


def list_plugins(args: argparse.Namespace) -> list[dict[str, Any]]:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    api = c.kube_api_client(args.kubeconfig, args.context)
    custom = client.CustomObjectsApi(api)
    try:
        if args.all_namespaces:
            result = custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)
        else:
            result = custom.list_namespaced_custom_object(GROUP, VERSION, args.namespace, PLURAL)
    except ApiException as e:
        raise c.CliError(f"listing BrokerPlugins: HTTP {e.status} {e.reason}") from e
    except OSError as e:
        raise c.CliError(f"listing BrokerPlugins: apiserver unreachable: {e}") from e
    finally:
        api.close()
    found: Any = result
    items: list[dict[str, Any]] = list(found.get("items") or [])
    return sorted(items, key=lambda o: (o["metadata"]["namespace"], o["metadata"]["name"]))


def summary(obj: dict[str, Any]) -> dict[str, Any]:
    status = obj.get("status") or {}
    built, ready = _condition(obj, "Built"), _condition(obj, "Ready")
    return {
        "namespace": obj["metadata"]["namespace"], "name": obj["metadata"]["name"],
        "broker": c.pick(obj, "spec", "broker") or "",
        "built": built.get("status", "Unknown"), "ready": ready.get("status", "Unknown"),
        "reason": ready.get("reason") or built.get("reason") or "",
        "message": ready.get("message") or "",
        "podsReady": status.get("podsReady"), "podsTotal": status.get("podsTotal"),
        "image": status.get("currentImage") or "", "commit": status.get("currentCommit") or "",
        "build": status.get("currentBuild") or "",
    }


def run(args: argparse.Namespace) -> int:
    rows = [summary(o) for o in list_plugins(args)]
    if args.output != "table":
        c.emit(rows, args.output)
        return c.EXIT_OK
    if not rows:
        where = "any namespace" if args.all_namespaces else f"namespace {args.namespace}"
        print(f"no BrokerPlugins in {where}")
        return c.EXIT_OK
    c.table(("NAMESPACE", "NAME", "BROKER", "BUILT", "READY", "PODS", "DIGEST", "COMMIT",
             "REASON"),
            [(r["namespace"], r["name"], r["broker"], r["built"], r["ready"],
              f"{r['podsReady']}/{r['podsTotal']}" if r["podsTotal"] is not None else "-",
              c.short_digest(r["image"].rpartition("@")[2]), r["commit"][:12] or "-",
              r["reason"] or "-") for r in rows])
    return c.EXIT_OK
