"""gateway.bearer: the token grammar the client writes is the one the gateway reads."""

from __future__ import annotations

import pytest

from gateway import bearer
from gateway.security.auth import generate_token

GOOD = ["abc", "A-b.c_d~e+f/g", "dG9rZW4=", "dG9r==", generate_token(), "x" * 4096]
BAD = ["", "has space", "line\nbreak", "tab\there", "=leading", "a=b", "ünïcode", "a,b"]


@pytest.mark.parametrize("token", GOOD)
def test_what_the_client_sends_the_gateway_reads_back(token: str) -> None:
    pairs = bearer.metadata(token)
    assert pairs == (("authorization", f"Bearer {token}"),)
    assert bearer.parse(pairs) == token
    assert bearer.parse([(k, v.encode()) for k, v in pairs]) == token


@pytest.mark.parametrize("token", BAD)
def test_what_the_client_refuses_the_gateway_refuses(token: str) -> None:
    with pytest.raises(ValueError) as caught:
        bearer.metadata(token)
    if token:
        assert token not in str(caught.value)
    with pytest.raises(bearer.InvalidAuthorization):
        bearer.parse([("authorization", f"Bearer {token}")])


def test_no_token_is_no_metadata() -> None:
    assert bearer.metadata(None) == ()
    assert bearer.parse(bearer.metadata(None)) is None
    assert bearer.parse(None) is None


@pytest.mark.parametrize("header", ["bearer abc", "BEARER abc", "Bearer   abc"])
def test_the_scheme_is_case_insensitive_and_spaces_repeat(header: str) -> None:
    assert bearer.parse([("Authorization", header)]) == "abc"


def test_a_token_longer_than_the_gateway_takes_is_refused_on_receipt() -> None:
    with pytest.raises(bearer.InvalidAuthorization, match="too long"):
        bearer.parse([("authorization", "Bearer " + "x" * (bearer.MAX_TOKEN_LENGTH + 1))])


def test_an_invalid_authorization_is_a_value_error() -> None:
    assert issubclass(bearer.InvalidAuthorization, ValueError)
