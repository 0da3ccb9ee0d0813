"""Token file parsing, rotation and role decisions."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import pytest

from mlbackend_runtime import errors
from mlbackend_runtime.auth import (
    Authenticator,
    Role,
    TokenFileError,
    TokenStore,
    parse_token_file,
    roles_from_descriptors,
)
from mlbackend_serving.app import SPEC as SERVING_SPEC

READER = "reader-token-0123456789"


def test_token_file_accepts_plain_and_hashed_tokens() -> None:
    digest = hashlib.sha256(b"hashed-admin-token-xyz").hexdigest()
    principals = parse_token_file(
        f"# comment\n{READER} reader dashboards\n\nsha256:{digest} admin alice # ops\n"
    )
    by_identity = {p.identity: p.role for p in principals.values()}
    assert by_identity == {"dashboards": Role.READER, "alice": Role.ADMIN}
    assert READER not in "".join(principals)  # only digests are kept


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("short reader", "shorter than 16"),
        (f"{READER} superuser", "unknown role 'superuser'"),
        (f"{READER}", "expected 'TOKEN ROLE [IDENTITY]'"),
        ("sha256:abc reader", "64 hex digits"),
        ("# nothing\n", "no tokens"),
    ],
)
def test_bad_token_files_name_the_line(text: str, message: str) -> None:
    with pytest.raises(TokenFileError, match=re.escape(message)) as raised:
        parse_token_file(text, "tokens")
    assert str(raised.value).startswith("tokens")


def test_token_store_picks_up_rotation_and_keeps_last_good_file(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"{READER} reader r\n")
    store = TokenStore(path)
    assert store.lookup(READER) is not None
    rotated = "rotated-token-0123456789"
    path.write_text(f"{rotated} writer w\n")
    os.utime(path, ns=(1, 1))  # a different mtime even on coarse clocks
    store.RECHECK_SECONDS = 0.0
    assert store.lookup(READER) is None
    assert store.lookup(rotated) is not None
    path.write_text("garbage\n")
    os.utime(path, ns=(2, 2))
    assert store.lookup(rotated) is not None  # a broken edit locks nobody out


def test_roles_come_from_the_contract() -> None:
    roles = roles_from_descriptors(["mlbackend.registry.v1.ModelRegistryService"])
    assert roles["/mlbackend.registry.v1.ModelRegistryService/ListRegisteredModels"] == Role.READER
    assert roles["/mlbackend.registry.v1.ModelRegistryService/CreateModelVersion"] == Role.WRITER
    assert roles["/mlbackend.registry.v1.ModelRegistryService/DeleteModelVersion"] == Role.ADMIN


def test_open_inference_protocol_roles_are_set_by_serving() -> None:
    roles = roles_from_descriptors(SERVING_SPEC.grpc_services, SERVING_SPEC.role_overrides)
    assert roles["/inference.GRPCInferenceService/ModelInfer"] == Role.READER
    assert roles["/inference.GRPCInferenceService/RepositoryModelLoad"] == Role.ADMIN


def test_authenticator_decisions(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"{READER} reader r\n")
    method = "/mlbackend.registry.v1.ModelRegistryService/DeleteModelVersion"
    auth = Authenticator(TokenStore(path), {method: Role.ADMIN})
    with pytest.raises(errors.Unauthenticated):
        auth.authorize(method, None)
    with pytest.raises(errors.Unauthenticated):
        auth.authorize(method, f"Token {READER}")
    with pytest.raises(errors.PermissionDenied, match="needs role admin; r has reader"):
        auth.authorize(method, f"Bearer {READER}")
    # Unknown methods need admin: fail closed.
    with pytest.raises(errors.PermissionDenied):
        auth.authorize("/some.Other/Method", f"Bearer {READER}")
    assert Authenticator(None, {}).authorize(method, None).identity == "anonymous"
