"""Resumable write tokens (gateway/security/write_tokens.py): signing, verifying, tampering,
key files and key rotation."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from pathlib import Path

import pytest

from gateway.security.write_tokens import (
    MARKER_PREFIX,
    MIN_KEY_BYTES,
    TokenRejected,
    WriteKeys,
    WriteKeysError,
    WriteToken,
    generate_key,
    marker_key,
    parse_keys,
    parse_marker,
    principal_digest,
    sign,
    upload_digest,
    verify,
)

KEY_A = b"a" * MIN_KEY_BYTES
KEY_B = b"b" * MIN_KEY_BYTES
TOKEN = WriteToken(
    principal=principal_digest("batch-job"),
    started=1_999_000_000,
    expires=2_000_000_000,
    upload_id="upload-1",
    part_size=8 << 20,
    spec=b"\x0a\x05spec!",
    parts=3,
    persisted=3 * (8 << 20),
    crc=b"\x01\x02\x03\x04\x05\x06\x07\x08",
)


def _key_file(path: Path, signing: str, **keys: bytes) -> Path:
    lines = [f"signing: {signing}", "keys:"]
    lines += [f"  {kid}: {base64.b64encode(key).decode()}" for kid, key in keys.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def test_a_token_round_trips_with_its_key_id() -> None:
    text = sign(TOKEN, "a", KEY_A)
    assert text.startswith("gw1.")
    assert verify(text, {"a": KEY_A}) == TOKEN.__class__(**{**TOKEN.__dict__, "kid": "a"})


def test_the_principal_is_recorded_as_a_digest() -> None:
    text = sign(TOKEN, "a", KEY_A)
    assert "batch-job" not in _unb64(text.split(".")[1]).decode()
    assert principal_digest("batch-job") != principal_digest("batch-job2")


@pytest.mark.parametrize(
    "field", ["p", "t", "x", "u", "s", "o", "n", "z", "c"], ids=lambda field: f"payload[{field}]"
)
def test_a_changed_payload_is_forged(field: str) -> None:
    prefix, payload, mac = sign(TOKEN, "a", KEY_A).split(".")
    document = json.loads(_unb64(payload))
    document[field] = 7 if isinstance(document[field], int) else _b64(b"other")
    changed = _b64(json.dumps(document, separators=(",", ":")).encode())
    with pytest.raises(TokenRejected, match="forged"):
        verify(f"{prefix}.{changed}.{mac}", {"a": KEY_A})


def test_a_changed_mac_or_another_key_is_forged() -> None:
    prefix, payload, mac = sign(TOKEN, "a", KEY_A).split(".")
    flipped = _b64(bytes([_unb64(mac)[0] ^ 1]) + _unb64(mac)[1:])
    with pytest.raises(TokenRejected, match="forged"):
        verify(f"{prefix}.{payload}.{flipped}", {"a": KEY_A})
    with pytest.raises(TokenRejected, match="forged"):
        verify(sign(TOKEN, "a", KEY_B), {"a": KEY_A})


def test_a_key_id_the_file_does_not_hold_is_unknown() -> None:
    with pytest.raises(TokenRejected, match="unknown key"):
        verify(sign(TOKEN, "gone", KEY_A), {"a": KEY_A})


@pytest.mark.parametrize(
    "text",
    [
        "",
        "gw1",
        "gw1..",
        "gw2." + _b64(b"{}") + ".AAAA",
        "gw1.%%%." + _b64(b"x"),
        "gw1." + _b64(b"not json") + "." + _b64(b"x"),
        "gw1." + _b64(b"[1, 2]") + "." + _b64(b"x"),
        "gw1.a.b.c",
        "gw1." + "A" * 20000 + ".AAAA",
    ],
)
def test_malformed_tokens_are_rejected(text: str) -> None:
    with pytest.raises(TokenRejected, match="malformed"):
        verify(text, {"a": KEY_A})


def test_a_signed_payload_missing_a_field_is_malformed() -> None:
    """Even with a good mac (a key holder's bug), the payload must be complete."""
    import hashlib
    import hmac

    body = "gw1." + _b64(json.dumps({"k": "a", "p": "x"}).encode())
    mac = _b64(hmac.new(KEY_A, body.encode(), hashlib.sha256).digest())
    with pytest.raises(TokenRejected, match="malformed"):
        verify(f"{body}.{mac}", {"a": KEY_A})


def test_generated_keys_are_accepted_by_the_parser() -> None:
    keys = parse_keys(f"signing: k\nkeys:\n  k: {generate_key()}\n")
    assert keys.signing == "k" and len(keys.keys["k"]) == MIN_KEY_BYTES


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("signing: [", "not valid YAML"),
        ("just text", "must be a mapping"),
        ("signing: a\nkeys: {}\n", "'keys' must map"),
        (f"signing: a\nkeys:\n  a: {base64.b64encode(b'short').decode()}\n", "has 5 bytes"),
        ("signing: a\nkeys:\n  a: '***'\n", "is not base64"),
        (f"signing: b\nkeys:\n  a: {generate_key()}\n", "'signing' must name one of the keys"),
        (f"signing: a.b\nkeys:\n  a.b: {generate_key()}\n", "without '.'"),
        (f"signing: a\nkeys:\n  a: {generate_key()}\nextra: 1\n", "must be a mapping"),
    ],
)
def test_bad_key_files_are_refused_with_one_message(text: str, message: str) -> None:
    with pytest.raises(WriteKeysError, match=message):
        parse_keys(text, "keys.yaml")


def test_keys_rotate_without_breaking_live_tokens(tmp_path: Path) -> None:
    """Add the new key, sign with it, drop the old one: tokens of the old key verify until it
    is removed from the file."""
    path = _key_file(tmp_path / "keys.yaml", "a", a=KEY_A)
    keys = WriteKeys(path, check_interval=0)
    old = keys.sign(TOKEN)
    assert keys.verify(old).kid == "a"

    _key_file(path, "b", a=KEY_A, b=KEY_B)
    new = keys.sign(TOKEN)
    assert keys.verify(new).kid == "b"
    assert keys.verify(old).kid == "a"

    _key_file(path, "b", b=KEY_B)
    assert keys.verify(new).kid == "b"
    with pytest.raises(TokenRejected, match="unknown key"):
        keys.verify(old)


def test_a_bad_key_file_update_keeps_the_keys_in_force(tmp_path: Path) -> None:
    path = _key_file(tmp_path / "keys.yaml", "a", a=KEY_A)
    keys = WriteKeys(path, check_interval=0)
    token = keys.sign(TOKEN)
    path.write_text("signing: nothing\n")
    assert keys.verify(token).kid == "a"
    assert keys.reload_failures == 1


def test_a_missing_key_file_stops_the_start(tmp_path: Path) -> None:
    with pytest.raises(WriteKeysError, match="cannot read"):
        WriteKeys(tmp_path / "missing.yaml")


# --- markers -------------------------------------------------------------------------------------


def test_a_token_without_a_marker_still_verifies() -> None:
    """Tokens issued before markers existed carry neither "mk" nor "mu"."""
    body = json.loads(_unb64(sign(TOKEN, "a", KEY_A).split(".")[1]))
    del body["mk"], body["mu"]
    payload = _b64(json.dumps(body).encode())
    mac = _b64(hmac.new(KEY_A, f"gw1.{payload}".encode(), hashlib.sha256).digest())
    assert verify(f"gw1.{payload}.{mac}", {"a": KEY_A}).marker_upload_id == ""


def test_a_marker_names_its_expiry_and_upload_and_is_signed_for_its_bucket() -> None:
    upload_id = "x" * 1024  # S3 may make upload ids this long
    key = marker_key("2026-12", KEY_A, "uploads", upload_id, 2_000_000_000)
    assert key.startswith(MARKER_PREFIX) and len(key) < 200
    marker = parse_marker(key)
    assert marker is not None
    assert (marker.expires, marker.upload, marker.kid) == (
        2_000_000_000, upload_digest(upload_id), "2026-12",
    )  # fmt: skip
    assert marker.signed({"2026-12": KEY_A}, "uploads")
    assert not marker.signed({"2026-12": KEY_B}, "uploads")
    assert not marker.signed({"other": KEY_A}, "uploads")
    assert not marker.signed({"2026-12": KEY_A}, "other-bucket")


@pytest.mark.parametrize("change", ["expires", "upload", "mac"])
def test_a_changed_marker_is_not_signed(change: str) -> None:
    key = marker_key("a", KEY_A, "b", "upload-1", 2_000_000_000)
    expires, rest = key[len(MARKER_PREFIX) :].split("/")
    digest, kid, mac = rest.split(".")
    if change == "expires":
        expires = "1"
    elif change == "upload":
        digest = upload_digest("upload-2")
    else:
        mac = mac[:-1] + ("A" if mac[-1] != "A" else "B")
    marker = parse_marker(f"{MARKER_PREFIX}{expires}/{digest}.{kid}.{mac}")
    assert marker is not None
    assert not marker.signed({"a": KEY_A}, "b")


@pytest.mark.parametrize(
    "key",
    [
        "photos/cat.jpg",
        MARKER_PREFIX,
        f"{MARKER_PREFIX}soon/{'0' * 32}.a.mac",
        f"{MARKER_PREFIX}1/{'0' * 31}.a.mac",
        f"{MARKER_PREFIX}1/{'G' * 32}.a.mac",
        f"{MARKER_PREFIX}1/{'0' * 32}.a",
        f"{MARKER_PREFIX}1/{'0' * 32}..mac",
        f"{MARKER_PREFIX}{'9' * 13}/{'0' * 32}.a.mac",
    ],
)
def test_keys_that_are_not_markers(key: str) -> None:
    assert parse_marker(key) is None
