"""API keys (service.auth): parsing KEY and KEY:scope+scope entries, the keys file, open scopes, bearer
parsing, and the UNAUTHENTICATED / PERMISSION_DENIED decisions; route and method names map to scopes."""

from __future__ import annotations

import pytest

from service.auth import Authenticator, bearer_token, grpc_scope, http_scope, parse_key, read_keys_file
from service.config import Settings
from service.errors import ServiceError


def decision(authenticator: Authenticator, header: str | None, scope: str | None) -> str:
    try:
        authenticator.check(header, scope)
    except ServiceError as error:
        return error.code.value
    return "OK"


@pytest.fixture
def authenticator():
    return Authenticator([parse_key("full-key"), parse_key("seg-key:segment"), parse_key("two:ask+models")])


def test_without_keys_everything_is_open():
    open_service = Authenticator([])
    assert not open_service.enabled and decision(open_service, None, "ask") == "OK"


@pytest.mark.parametrize("header, scope, expected", [
    (None, "ask", "UNAUTHENTICATED"), ("Bearer nope", "ask", "UNAUTHENTICATED"),
    ("Basic full-key", "ask", "UNAUTHENTICATED"), ("Bearer", "ask", "UNAUTHENTICATED"),
    ("Bearer full-key", "ask", "OK"), ("bearer  full-key ", "segment", "OK"),
    ("Bearer seg-key", "segment", "OK"), ("Bearer seg-key", "ask", "PERMISSION_DENIED"),
    ("Bearer seg-key", "models", "PERMISSION_DENIED"), ("Bearer two", "models", "OK"),
    ("Bearer two", "segment", "PERMISSION_DENIED"),
    (None, "health", "OK"), (None, "metrics", "OK"), ("Bearer nope", "health", "OK"),
    (None, None, "UNAUTHENTICATED"), ("Bearer seg-key", None, "OK"),  # unknown route: any valid key, then 404
])
def test_decisions(authenticator, header, scope, expected):
    assert decision(authenticator, header, scope) == expected


def test_a_key_that_is_a_prefix_of_another_is_a_different_key(authenticator):
    assert decision(authenticator, "Bearer full-ke", "ask") == "UNAUTHENTICATED"
    assert decision(authenticator, "Bearer full-key2", "ask") == "UNAUTHENTICATED"


def test_open_routes_are_configuration():
    closed = Authenticator([parse_key("k")], open_scopes=())
    assert decision(closed, None, "health") == "UNAUTHENTICATED"
    docs_open = Authenticator([parse_key("k")], open_scopes=("health", "docs"))
    assert decision(docs_open, None, "docs") == "OK" and decision(docs_open, None, "metrics") == "UNAUTHENTICATED"
    with pytest.raises(ValueError):
        Authenticator([parse_key("k")], open_scopes=("everything",))


@pytest.mark.parametrize("entry", ["", " :ask", "k:nosuchscope", "k:ask+bogus"])
def test_malformed_entries_are_refused_without_echoing_the_key(entry):
    with pytest.raises(ValueError) as refused:
        parse_key(entry)
    assert "k:" not in str(refused.value)


def test_keys_come_from_the_setting_and_the_file(tmp_path):
    keys_file = tmp_path / "keys"
    keys_file.write_text("# gateway\n\nfile-key:segment\n")
    assert read_keys_file(keys_file) == ["file-key:segment"]
    authenticator = Authenticator.from_settings(Settings(api_keys="env-key", api_keys_file=keys_file))
    assert decision(authenticator, "Bearer env-key", "ask") == "OK"
    assert decision(authenticator, "Bearer file-key", "ask") == "PERMISSION_DENIED"
    with pytest.raises(ValueError):
        Authenticator.from_settings(Settings(api_keys_file=tmp_path / "missing"))


def test_keys_are_kept_as_digests_and_hidden_in_settings(authenticator):
    assert all(len(k.digest) == 32 for k in authenticator.keys)
    assert "full-key" not in repr(Settings(api_keys="full-key"))


def test_bearer_parsing():
    assert bearer_token("Bearer abc") == "abc" and bearer_token("BEARER abc") == "abc"
    assert bearer_token(None) is None and bearer_token("Token abc") is None and bearer_token("Bearer ") is None


def test_routes_and_methods_map_to_scopes():
    assert http_scope("/v1/chat/completions") == "ask" and http_scope("/v1/models/{model_id}") == "models"
    assert http_scope("unmatched") is None
    assert grpc_scope("/medclm.v1.MedCLM/Segment") == "segment"
    assert grpc_scope("/grpc.health.v1.Health/Watch") == "health"
    assert grpc_scope("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo") == "reflection"
    assert grpc_scope("/other.Service/Call") is None
