"""Shared by the subcommands that talk to the builder: connection flags, output, errors.

Connection: ``--builder HOST:PORT`` (or ``$PLUGFORGE_BUILDER``), ``--token-file`` (or
``$PLUGFORGE_TOKEN_FILE``; one token, a mounted Secret or a file you keep private),
``--ca-file`` (or ``$PLUGFORGE_CA_FILE``; the CA that signed the builder's certificate; the
system roots when omitted). The channel is always TLS.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, TypeVar

import grpc
import yaml
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from plugforge.grpc_auth import TokenFileError, read_client_token, secure_channel
from plugforge.v1 import build_pb2_grpc as pb_grpc

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

ENV_BUILDER = "PLUGFORGE_BUILDER"
ENV_TOKEN_FILE = "PLUGFORGE_TOKEN_FILE"  # noqa: S105 - a variable name, not a secret
ENV_CA_FILE = "PLUGFORGE_CA_FILE"
ENV_NAMESPACE = "PLUGFORGE_NAMESPACE"

T = TypeVar("T")


class CliError(Exception):
    """A failure to report in one line (exit code 1 unless ``code`` says otherwise)."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


def add_connection_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("connection to the builder")
    g.add_argument("--builder", metavar="ADDRESS", default=os.environ.get(ENV_BUILDER),
                   help=f"builder gRPC address HOST:PORT (default ${ENV_BUILDER})")
    g.add_argument("--token-file", metavar="FILE", type=Path,
                   default=os.environ.get(ENV_TOKEN_FILE),
                   help=f"file holding your API token (default ${ENV_TOKEN_FILE})")
    g.add_argument("--ca-file", metavar="FILE", type=Path, default=os.environ.get(ENV_CA_FILE),
                   help=f"CA certificate of the builder (default ${ENV_CA_FILE}, else the "
                        "system roots)")
    g.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS",
                   help="deadline of each call (default %(default)s)")
    add_namespace_flag(p)


def add_kubeconfig_flags(p: argparse.ArgumentParser) -> None:
    """``--kubeconfig`` and ``--context``, found as kubectl finds them (read by kube_api_client)."""
    p.add_argument("--kubeconfig", type=Path, default=os.environ.get("KUBECONFIG"),
                   help="kubeconfig file (default $KUBECONFIG, else ~/.kube/config)")
    p.add_argument("--context", help="kubeconfig context (default: its current context)")


def kube_api_client(kubeconfig: Path | None, context: str | None) -> Any:
    """A kubernetes ApiClient from ``--kubeconfig``/``--context`` (as kubectl finds them); a bad
    or unreadable kubeconfig is a usage error saying so."""
    from kubernetes import config
    from kubernetes.config.config_exception import ConfigException

    try:
        return config.new_client_from_config(
            config_file=str(kubeconfig) if kubeconfig else None, context=context)
    except (ConfigException, OSError, yaml.YAMLError) as e:
        raise CliError(f"kubeconfig: {e}", EXIT_USAGE) from e


def add_namespace_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("-n", "--namespace", default=os.environ.get(ENV_NAMESPACE, "default"),
                   help=f"namespace of the plugins (default ${ENV_NAMESPACE} or 'default')")


def add_output_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", choices=("table", "json", "yaml"), default="table",
                   help="output format (default: a table for people)")


def stub(args: argparse.Namespace) -> pb_grpc.BuildServiceStub:
    if not args.builder:
        raise CliError(f"no builder address: pass --builder HOST:PORT or set ${ENV_BUILDER}",
                       EXIT_USAGE)
    if args.token_file is None:
        raise CliError(f"no API token: pass --token-file FILE or set ${ENV_TOKEN_FILE}",
                       EXIT_USAGE)
    try:
        token = read_client_token(Path(args.token_file))
    except TokenFileError as e:
        raise CliError(str(e), EXIT_USAGE) from e
    ca = Path(args.ca_file) if args.ca_file else None
    if ca is not None and not ca.is_file():
        raise CliError(f"--ca-file {ca}: no such file", EXIT_USAGE)
    return pb_grpc.BuildServiceStub(secure_channel(args.builder, ca, token))


def call(fn: Callable[[], T], what: str) -> T:
    """``fn()``, with gRPC failures turned into one readable line."""
    try:
        return fn()
    except grpc.RpcError as e:
        raise CliError(rpc_message(e, what)) from e


def rpc_message(e: grpc.RpcError, what: str) -> str:
    code = e.code() if hasattr(e, "code") else None
    details = e.details() if hasattr(e, "details") else str(e)
    hint = {
        grpc.StatusCode.UNAUTHENTICATED: " (check --token-file)",
        grpc.StatusCode.PERMISSION_DENIED: " (use -n with a namespace your token is scoped to, "
                                           "or ask for a token scoped to this one)",
        grpc.StatusCode.UNAVAILABLE: " (is --builder right, and does --ca-file match its "
                                     "certificate?)",
    }.get(code, "") if code is not None else ""
    name = code.name if code is not None else "ERROR"
    return f"{what}: {name}: {details}{hint}"


def run_safely(fn: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    try:
        return fn(args)
    except CliError as e:
        print(f"plugforge {args.command}: {e}", file=sys.stderr)
        return e.code


def to_dict(message: Message) -> dict[str, Any]:
    return MessageToDict(message, preserving_proto_field_name=True)


def emit(data: Any, output: str, out: IO[str] | None = None) -> None:
    stream = out or sys.stdout
    if output == "json":
        stream.write(json.dumps(data, indent=2, sort_keys=True) + "\n")
    else:
        stream.write(yaml.safe_dump(data, sort_keys=True))


def table(headers: Sequence[str], rows: Sequence[Sequence[str]],
          out: IO[str] | None = None) -> None:
    """Columns padded to their widest cell, kubectl style (no borders)."""
    stream = out or sys.stdout
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    for row in [list(headers), *rows]:
        stream.write("   ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))
                     .rstrip() + "\n")


def short_digest(digest: str) -> str:
    return digest.removeprefix("sha256:")[:12] or "-"


def enum_name(value: str, prefix: str) -> str:
    """``BUILD_PHASE_SUCCEEDED`` → ``Succeeded``; ``POD_STATE_UNREACHABLE`` → ``Unreachable``."""
    word = value.removeprefix(prefix)
    return "".join(part.capitalize() for part in word.split("_")) or "-"


@contextmanager
def spinner(text: str, stream: IO[str] | None = None) -> Iterator[Callable[[str], None]]:
    """A spinner on stderr while waiting, only when stdout is a terminal (scripts see nothing).

    Yields a function to change the text."""
    out = stream or sys.stderr
    if not sys.stdout.isatty():
        yield lambda _text: None
        return
    state = {"text": text}
    stop = threading.Event()

    def spin() -> None:
        for frame in itertools.cycle("|/-\\"):
            out.write(f"\r{frame} {state['text']}\033[K")
            out.flush()
            if stop.wait(0.1):
                break
        out.write("\r\033[K")
        out.flush()

    thread = threading.Thread(target=spin, daemon=True)
    thread.start()
    try:
        yield lambda new: state.__setitem__("text", new)
    finally:
        stop.set()
        thread.join()


def pick(mapping: Mapping[str, Any], *path: str) -> Any:
    value: Any = mapping
    for key in path:
        value = (value or {}).get(key) if isinstance(value, Mapping) else None
    return value
