"""``plugforge verify`` and ``plugforge provenance``: check an image the way the sidecar does.

Both talk to the registry directly (``--registry-ca``, ``--docker-config`` for credentials,
``--insecure-http`` for a plain-HTTP registry) and never pull the image's layers.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from plugforge.cli import _common as c
from plugforge.oci import (
    ImageRef,
    OciError,
    RegistryClient,
    credentials_from_dockerconfigjson,
    parse_reference,
    require_digest,
)
from plugforge.signing import (
    KeyFileError,
    PublicKey,
    TrustPolicy,
    VerificationFailed,
    listed_provenance,
    load_public_keys,
    parse_policy,
    policy_for_keys,
    verify_image,
)


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    v = subparsers.add_parser(
        "verify", help="verify an image's signature (and provenance) like the sidecar",
        description="Verify IMAGE@DIGEST's cosign signature with --key (one or more PEM public "
                    "keys), or against a sidecar trust policy with --policy (then provenance, "
                    "sources and refs too). Exit 0 verified, 1 refused (the reason is printed), "
                    "2 usage.")
    v.add_argument("image", metavar="IMAGE@DIGEST")
    v.add_argument("--key", type=Path, action="append", default=[],
                   help="public key PEM (cosign.pub); repeat for several")
    v.add_argument("--policy", type=Path, help="a trust policy file (policy.yaml)")
    _registry_flags(v)
    c.add_output_flag(v)
    v.set_defaults(run=lambda args: c.run_safely(run_verify, args))

    p = subparsers.add_parser(
        "provenance", help="the SLSA provenance attested for an image",
        description="List the build provenance attested for IMAGE@DIGEST: source, commit, ref, "
                    "recipe, toolchain, builder, times. With --key only statements that key "
                    "signed are trusted; without it every statement is shown, marked "
                    "unverified. Exit 0 listed, 1 none or failed, 2 usage.")
    p.add_argument("image", metavar="IMAGE@DIGEST")
    p.add_argument("--key", type=Path, action="append", default=[],
                   help="public key PEM (cosign.pub); repeat for several")
    _registry_flags(p)
    c.add_output_flag(p)
    p.set_defaults(run=lambda args: c.run_safely(run_provenance, args))


def _registry_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--registry-ca", type=Path, help="CA bundle of a registry with a private CA")
    p.add_argument("--docker-config", type=Path,
                   help="a .dockerconfigjson file with the registry's credentials")
    p.add_argument("--insecure-http", action="store_true",
                   help="talk plain HTTP to the registry (a local test registry only)")


def _image(text: str) -> ImageRef:
    try:
        return require_digest(parse_reference(text))
    except OciError as e:
        raise c.CliError(str(e), c.EXIT_USAGE) from e


def _keys(paths: list[Path]) -> list[PublicKey]:
    keys: list[PublicKey] = []
    for path in paths:
        try:
            keys += load_public_keys(path.read_bytes(), str(path), path.stem)
        except (OSError, KeyFileError) as e:
            raise c.CliError(f"--key {path}: {e}", c.EXIT_USAGE) from e
    return keys


def _client(args: argparse.Namespace, ref: ImageRef) -> RegistryClient:
    credentials = None
    try:
        if args.docker_config is not None:
            credentials = credentials_from_dockerconfigjson(args.docker_config.read_bytes(),
                                                            ref.registry)
        return RegistryClient(ref.registry, credentials=credentials, ca_bundle=args.registry_ca,
                              insecure_http=args.insecure_http)
    except (OSError, OciError) as e:
        raise c.CliError(f"registry {ref.registry}: {e}", c.EXIT_USAGE) from e


def _policy(args: argparse.Namespace) -> TrustPolicy:
    if (args.policy is None) == (not args.key):
        raise c.CliError("give --key PEM (signature only) or --policy FILE (the sidecar's "
                         "trust policy), not both", c.EXIT_USAGE)
    if args.policy is None:
        return policy_for_keys(_keys(args.key))
    try:
        return parse_policy(args.policy.read_bytes(), str(args.policy))
    except OSError as e:
        raise c.CliError(f"--policy {args.policy}: {e.strerror}", c.EXIT_USAGE) from e
    except VerificationFailed as e:
        raise c.CliError(str(e), c.EXIT_USAGE) from e


def run_verify(args: argparse.Namespace) -> int:
    ref = _image(args.image)
    policy = _policy(args)
    with _client(args, ref) as client:
        try:
            verified = verify_image(client, ref, policy)
        except VerificationFailed as e:
            if args.output != "table":
                c.emit({"image": str(ref), "verified": False, "reason": e.reason,
                        "message": e.detail}, args.output)
            raise c.CliError(f"refused: {e}") from e
        except OciError as e:
            raise c.CliError(f"{ref}: {e}") from e
    if args.output != "table":
        c.emit({"image": verified.image, "verified": True, "signers": list(verified.signers),
                "provenance": [p.to_json() for p in verified.provenance]}, args.output)
        return c.EXIT_OK
    print(f"verified {verified.image}")
    print(f"  signed by {', '.join(verified.signers)}")
    for p in verified.provenance:
        print(f"  built from {p.source_url} {p.ref} commit {p.commit} ({p.build_name}, "
              f"{p.finished})")
    return c.EXIT_OK


def run_provenance(args: argparse.Namespace) -> int:
    ref = _image(args.image)
    keys = _keys(args.key)
    with _client(args, ref) as client:
        try:
            listed = listed_provenance(client, ref, keys)
        except (VerificationFailed, OciError) as e:
            raise c.CliError(f"{ref}: {e}") from e
    if not listed:
        raise c.CliError(f"{ref} has no SLSA provenance attestation")
    if args.output != "table":
        c.emit([{**p.to_json(), "verified": trusted} for p, trusted in listed], args.output)
        return c.EXIT_OK
    rows = [[p.commit[:12], p.ref, p.source_url, p.build_name, p.template,
             p.builder_version, p.finished,
             ("yes" if trusted else "NO (not signed by --key)") if keys else "unverified"]
            for p, trusted in listed]
    c.table(["COMMIT", "REF", "SOURCE", "BUILD", "TEMPLATE", "BUILDER", "FINISHED", "VERIFIED"],
            rows)
    tools = {k: v for p, _ in listed for k, v in p.toolchain.items()}
    if tools:
        print("toolchain: " + "; ".join(f"{k} {v}" for k, v in sorted(tools.items())))
    if keys and not any(trusted for _, trusted in listed):
        print("none of these statements is signed by the given key(s)", file=sys.stderr)
        return c.EXIT_FAILED
    return c.EXIT_OK
