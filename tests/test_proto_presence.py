"""The response fields S3 may send empty have presence, and scripts/check_proto.py accepts that
change for exactly those fields, in that direction only (``GAINED_PRESENCE``).

The buf tests skip without node and npm, as tests/test_proto_lint.py's do (except in CI).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
from google.protobuf.descriptor import FieldDescriptor

from gateway.v1 import upload_service_pb2 as pb
from tests.helpers import load_script

ROOT = Path(__file__).resolve().parent.parent
PROTO_FILE = Path("proto/gateway/v1/upload_service.proto")

check_proto = load_script("check_proto")


def _field(message: str, name: str) -> FieldDescriptor:
    field: FieldDescriptor = pb.DESCRIPTOR.message_types_by_name[message].fields_by_name[name]
    return field


def test_the_accepted_fields_have_presence() -> None:
    for message, name in check_proto.GAINED_PRESENCE:
        assert _field(message, name).has_presence, (message, name)


@pytest.fixture(scope="module")
def buf() -> None:
    try:
        check_proto.buf_path()
    except check_proto.ToolError as error:
        message = f"buf unavailable: {error}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


def _message_body(text: str, message: str) -> tuple[int, int]:
    start = text.index(f"\nmessage {message} {{")
    return start, text.index("\n}", start)


def _set_presence(text: str, message: str, field: str, present: bool) -> str:
    """The .proto text with ``message.field`` declared ``optional`` or not."""
    start, end = _message_body(text, message)
    body = text[start:end]
    pattern = re.compile(rf"^  (optional )?(\w+) {field} = ", re.MULTILINE)
    assert len(pattern.findall(body)) == 1, (message, field)
    body = pattern.sub(rf"  {'optional ' if present else ''}\2 {field} = ", body)
    return text[:start] + body + text[end:]


def _workspace(directory: Path, text: str) -> Path:
    directory.mkdir()
    shutil.copy(ROOT / "buf.yaml", directory / "buf.yaml")
    shutil.copytree(ROOT / "proto", directory / "proto", ignore=shutil.ignore_patterns("*.binpb"))
    (directory / PROTO_FILE).write_text(text)
    return directory


def test_gaining_presence_is_accepted_against_the_api_before(buf: None, tmp_path: Path) -> None:
    """What ``--against-git`` sees for a ref from before the change: accepted, and said so."""
    current = (ROOT / PROTO_FILE).read_text()
    before = current
    for message, field in check_proto.GAINED_PRESENCE:
        before = _set_presence(before, message, field, present=False)
    old = _workspace(tmp_path / "old", before)
    result = check_proto.breaking(old / "proto", ROOT)
    assert result.ok, result.output


@pytest.mark.parametrize(
    ("message", "field", "present"),
    [
        ("ListPartsResponse", "upload_id", True),  # not on the list
        ("UploadPartResponse", "etag", False),  # on the list, but the other way round
    ],
    ids=["unlisted-field", "lost-presence"],
)
def test_any_other_presence_change_still_fails(
    buf: None, tmp_path: Path, message: str, field: str, present: bool
) -> None:
    changed = _set_presence((ROOT / PROTO_FILE).read_text(), message, field, present)
    result = check_proto.breaking(check_proto.IMAGE, _workspace(tmp_path / "new", changed))
    assert not result.ok
    assert "FIELD_SAME_CARDINALITY" in result.output
    assert f'with name "{field}" on message "{message}"' in result.output


def test_a_finding_that_is_not_a_presence_gain_is_not_hidden() -> None:
    finding = (
        'p.proto(1,1) : error FIELD_SAME_CARDINALITY : Field "1" with name "etag" on message '
        '"UploadPartResponse" changed cardinality from "optional with implicit presence" to '
        '"repeated".'
    )
    result = check_proto.accept_gained_presence(check_proto.Result(1, finding))
    assert (result.ok, result.output) == (False, finding)
    failure = check_proto.Result(1, "Failure: buf could not read the image")
    assert check_proto.accept_gained_presence(failure) == failure
