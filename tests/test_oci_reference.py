"""Image references, dockerconfigjson credentials and WWW-Authenticate parsing (pure code)."""

from __future__ import annotations

import base64
import json

import pytest

from plugforge.oci import (
    Credentials,
    ImageRef,
    InvalidReference,
    PermanentRegistryError,
    credentials_from_dockerconfigjson,
    parse_reference,
    parse_www_authenticate,
    require_digest,
)

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("text", "registry", "repository", "tag", "digest"),
    [
        ("127.0.0.1:5000/team/plugin:1.0", "127.0.0.1:5000", "team/plugin", "1.0", None),
        ("registry.example.com/a/b/c", "registry.example.com", "a/b/c", None, None),
        (f"localhost/x@{DIGEST}", "localhost", "x", None, DIGEST),
        (f"reg.io:443/my_team/plug-in.x:v1.2_3@{DIGEST}", "reg.io:443", "my_team/plug-in.x",
         "v1.2_3", DIGEST),
        ("[::1]:5000/p", "[::1]:5000", "p", None, None),
        ("r.io/a__b/c---d", "r.io", "a__b/c---d", None, None),
    ],
)
def test_parse_round_trip(text: str, registry: str, repository: str, tag: str | None,
                          digest: str | None) -> None:
    ref = parse_reference(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (registry, repository, tag,
                                                                   digest)
    assert str(ref) == text
    assert parse_reference(str(ref)) == ref


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("plugin:1.0", "explicit registry host"),
        ("team/plugin", "explicit registry host"),
        ("", "expected an image reference"),
        ("r.io/Team/plugin", "invalid repository path component 'Team'"),
        ("r.io/team//plugin", "invalid repository path component ''"),
        ("r.io/team/plugin-", "invalid repository path component 'plugin-'"),
        ("r.io/team/plugin:-bad", "invalid tag '-bad'"),
        ("r.io/team/plugin:" + "x" * 129, "invalid tag"),
        ("r.io/p@sha256:abc", "expected a digest 'sha256:<64 lowercase hex>'"),
        ("r.io/p@md5:" + "a" * 32, "expected a digest"),
        ("r.io/p@sha256:" + "AB" * 32, "expected a digest"),
        (" r.io/p", "whitespace"),
        ("bad_host.io/p", "expected a registry host"),
        ("r.io:99999/p", "port must be 1-65535"),
        ("r.io/" + "a" * 260, "the limit is 255"),
    ],
)
def test_invalid_references_say_why(text: str, fragment: str) -> None:
    with pytest.raises(InvalidReference) as info:
        parse_reference(text)
    assert fragment in str(info.value)


def test_require_digest_refuses_tags() -> None:
    with pytest.raises(InvalidReference) as info:
        require_digest("r.io/team/plugin:latest")
    assert str(info.value) == (
        "expected r.io/team/plugin@sha256:<64 hex>, found tag ':latest' — pin by digest"
    )
    with pytest.raises(InvalidReference, match="found neither tag nor digest"):
        require_digest("r.io/team/plugin")
    assert require_digest(f"r.io/team/plugin:1@{DIGEST}").digest == DIGEST
    ref = ImageRef("r.io", "p", "1")
    assert str(ref.with_digest(DIGEST)) == f"r.io/p:1@{DIGEST}"


def _config(auths: dict[str, object]) -> bytes:
    return json.dumps({"auths": auths}).encode()


def test_dockerconfigjson_auth_field_and_username_password() -> None:
    b64 = base64.b64encode(b"alice:pa:ss").decode()
    data = _config({"https://reg.io:5000/v1/": {"auth": b64},
                    "other.io": {"username": "bob", "password": "pw"}})
    assert credentials_from_dockerconfigjson(data, "reg.io:5000") == Credentials("alice", "pa:ss")
    assert credentials_from_dockerconfigjson(data, "OTHER.io") == Credentials("bob", "pw")
    assert credentials_from_dockerconfigjson(data, "missing.io") is None
    assert "pa:ss" not in repr(Credentials("alice", "pa:ss"))


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"{not json", "not valid JSON"),
        (b'{"nope": 1}', 'has no "auths" object'),
        (_config({"r.io": {"auth": "!!!notbase64"}}), "is not base64"),
        (_config({"r.io": {"auth": base64.b64encode(b"nocolon-s3cret").decode()}}),
         "no 'user:password' pair"),
        (_config({"r.io": {"email": "x"}}), "neither 'auth' nor"),
    ],
)
def test_dockerconfigjson_errors_never_quote_secrets(data: bytes, fragment: str) -> None:
    with pytest.raises(PermanentRegistryError) as info:
        credentials_from_dockerconfigjson(data, "r.io")
    assert fragment in str(info.value)
    assert "s3cret" not in str(info.value) and "notbase64" not in str(info.value)


def test_www_authenticate_bearer() -> None:
    challenge = parse_www_authenticate(
        'Bearer realm="https://auth.example.com/token?x=1",service="registry.example.com",'
        'scope="repository:team/plugin:pull,push"'
    )
    assert challenge.scheme == "bearer"
    assert challenge.params == {
        "realm": "https://auth.example.com/token?x=1",
        "service": "registry.example.com",
        "scope": "repository:team/plugin:pull,push",
    }


def test_www_authenticate_variants() -> None:
    assert parse_www_authenticate('Basic realm="plugforge-testbed"').params == {
        "realm": "plugforge-testbed"}
    spaced = parse_www_authenticate('bearer  realm = "r" , error=insufficient_scope')
    assert spaced.scheme == "bearer"
    assert spaced.params == {"realm": "r", "error": "insufficient_scope"}
    escaped = parse_www_authenticate(r'Bearer realm="a\"b"')
    assert escaped.params["realm"] == 'a"b'
    two = parse_www_authenticate('Bearer realm="x", Basic realm="y"')
    assert two.params == {"realm": "x"}
    with pytest.raises(PermanentRegistryError, match="cannot parse WWW-Authenticate"):
        parse_www_authenticate("")
