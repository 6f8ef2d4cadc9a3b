"""Pure parts of the gRPC layer: token files and matching, pagination, log replay/follow."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from builder.api.builds import ApiInvalid, paginate, stream_log
from plugforge.grpc_auth import Authenticator, TokenFileError, read_client_token, read_tokens


def test_token_file_named_and_bare(tmp_path: Path) -> None:
    f = tmp_path / "tokens"
    f.write_text("# callers\nalice:a-token\n\nbare-token\n")
    assert read_tokens(f) == {"alice": "a-token", "token-4": "bare-token"}


@pytest.mark.parametrize("text", ["", "# only a comment\n", "alice:\n", ":tok\n"])
def test_bad_token_files_are_explained(tmp_path: Path, text: str) -> None:
    f = tmp_path / "tokens"
    f.write_text(text)
    with pytest.raises(TokenFileError, match="token file"):
        read_tokens(f)


def test_client_token_file_holds_one_token(tmp_path: Path) -> None:
    f = tmp_path / "t"
    f.write_text("me:tok\n")
    assert read_client_token(f) == "tok"
    f.write_text("a:1\nb:2\n")
    with pytest.raises(TokenFileError, match="exactly one"):
        read_client_token(f)
    with pytest.raises(TokenFileError, match="cannot read"):
        read_client_token(tmp_path / "missing")


def test_authenticator_names_the_caller() -> None:
    auth = Authenticator({"alice": "a", "bob": "b"})
    assert auth.caller([("authorization", "Bearer b")]) == "bob"
    assert auth.caller([("authorization", "Bearer c")]) is None
    assert auth.caller([("authorization", "b")]) is None
    assert auth.caller([]) is None and auth.caller(None) is None


def build(name: str, created: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "creationTimestamp": created}}


def test_paginate_is_stable_under_inserts() -> None:
    items = [build(f"b{i}", f"2026-01-01T00:00:0{i}Z") for i in range(5)]
    page, token = paginate(list(reversed(items)), 2, "")
    assert [b["metadata"]["name"] for b in page] == ["b0", "b1"] and token
    # A build created between pages appears at the end, the next page does not shift.
    items.append(build("b9", "2026-01-01T00:00:09Z"))
    page, token = paginate(items, 2, token)
    assert [b["metadata"]["name"] for b in page] == ["b2", "b3"]
    page, token = paginate(items, 10, token)
    assert [b["metadata"]["name"] for b in page] == ["b4", "b9"] and token == ""


def test_paginate_refuses_bad_input() -> None:
    with pytest.raises(ApiInvalid, match="page_token"):
        paginate([], 1, "%%%")
    with pytest.raises(ApiInvalid, match="page_size"):
        paginate([], -1, "")


def test_replay_of_a_finished_build(tmp_path: Path) -> None:
    log = tmp_path / "b.log"
    log.write_text("one\ntwo\nno newline")
    chunks = list(stream_log(log, lambda: {"status": {"phase": "Failed"}}, follow=True))
    assert "".join(t for t, _ in chunks) == "one\ntwo\nno newline\n"
    assert {p for _, p in chunks} == {"Failed"}


def test_missing_log_replays_the_recorded_tail(tmp_path: Path) -> None:
    obj = {"status": {"phase": "Succeeded", "logTail": "last line"}}
    (text, _phase), = stream_log(tmp_path / "none.log", lambda: obj, follow=False)
    assert text.endswith("last line\n") and "not on this builder" in text


def test_follow_reads_until_the_build_finishes(tmp_path: Path) -> None:
    log = tmp_path / "b.log"
    log.write_text("start\n")
    status = {"phase": "Running"}
    seen: list[str] = []

    def writer() -> None:
        with open(log, "a") as f:
            f.write("step 1\npart")
            f.flush()
            threading.Event().wait(0.3)
            f.write("ial\ndone\n")
        status["phase"] = "Succeeded"

    thread = threading.Thread(target=writer)
    thread.start()
    for text, _phase in stream_log(log, lambda: {"status": dict(status)}, follow=True,
                                  poll_seconds=0.05):
        seen.append(text)
    thread.join()
    assert "".join(seen) == "start\nstep 1\npartial\ndone\n"
    assert all(chunk.endswith("\n") for chunk in seen)


def test_builder_api_settings_are_checked() -> None:
    from builder.settings import SettingsError, parse_settings

    with pytest.raises(SettingsError, match="--grpc-address needs --grpc-token-file, "
                                            "--grpc-tls-cert, --grpc-tls-key"):
        parse_settings(["--grpc-address", "127.0.0.1:9443"], {})
    with pytest.raises(SettingsError, match="expected HOST:PORT"):
        parse_settings([], {"PLUGFORGE_BUILDER_GRPC_ADDRESS": "9443"})
    s = parse_settings(["--grpc-address", "[::1]:9443", "--grpc-token-file", "/t",
                        "--grpc-tls-cert", "/c", "--grpc-tls-key", "/k"], {})
    assert s.grpc_address == ("::1", 9443) and s.grpc_token_file == Path("/t")


def test_builder_refuses_to_start_with_a_bad_token_file(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    from builder.__main__ import main

    empty = tmp_path / "tokens"
    empty.write_text("\n")
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: "
                          "{server: 'https://127.0.0.1:1'}}]\ncontexts: [{name: c, context: "
                          "{cluster: c, user: u}}]\ncurrent-context: c\nusers: [{name: u, "
                          "user: {token: x}}]\n")
    assert main(["--kubeconfig", str(kubeconfig), "--state-dir", str(tmp_path / "s"),
                 "--grpc-address", "127.0.0.1:0", "--grpc-token-file", str(empty),
                 "--grpc-tls-cert", "/c", "--grpc-tls-key", "/k",
                 "--executor", "process", "--allow-process-executor"]) == 2
    assert "no token in it" in capsys.readouterr().err
