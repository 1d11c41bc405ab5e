"""scripts/check_proto.py's buf checks catch what they are there for.

Each test runs buf on a modified copy of proto/ (with the repository's buf.yaml) in a temporary
directory. Without node and npm the tests skip, except in CI (``CI=true``), where that is a failure.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from tests.helpers import load_script

ROOT = Path(__file__).resolve().parent.parent
PROTO_FILE = Path("proto/gateway/v1/upload_service.proto")


check_proto = load_script("check_proto")


@pytest.fixture(scope="module", autouse=True)
def buf() -> None:
    try:
        check_proto.buf_path()
    except check_proto.ToolError as error:
        message = f"buf unavailable: {error}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


def workspace(tmp_path: Path, edit: tuple[str, str] | None = None) -> Path:
    """A copy of buf.yaml and proto/ with one exact, unique replacement in the .proto."""
    shutil.copy(ROOT / "buf.yaml", tmp_path / "buf.yaml")
    shutil.copytree(ROOT / "proto", tmp_path / "proto", ignore=shutil.ignore_patterns("*.binpb"))
    if edit:
        path = tmp_path / PROTO_FILE
        text = path.read_text()
        old, new = edit
        assert text.count(old) == 1, old
        path.write_text(text.replace(old, new))
    return tmp_path


def test_proto_is_lint_clean_and_compatible_with_the_baseline() -> None:
    assert check_proto.lint().ok, check_proto.lint().output
    result = check_proto.breaking(check_proto.IMAGE)
    assert result.ok, result.output


def test_an_undocumented_field_fails_lint(tmp_path: Path) -> None:
    old = "  // Required. The upload id returned by CreateMultipartUpload.\n"
    result = check_proto.lint(workspace(tmp_path, (old, "")))
    assert not result.ok
    assert re.search(
        r"upload_service\.proto\(\d+,\d+\) : error COMMENT_FIELD : Field \"upload_id\"",
        result.output,
    )


def test_a_misnamed_field_fails_lint(tmp_path: Path) -> None:
    edit = ("  string expected_bucket_owner = 22;\n}", "  string expectedBucketOwner = 22;\n}")
    result = check_proto.lint(workspace(tmp_path, edit))
    assert not result.ok
    assert "FIELD_LOWER_SNAKE_CASE" in result.output


@pytest.mark.parametrize(
    ("old", "new", "rule"),
    [
        (
            "  int32 part_number = 4;\n  // The exact",
            "  int32 part_num = 4;\n  // The exact",
            "FIELD_SAME_NAME",
        ),
        ("  string checksum_crc32c = 9;\n", "  reserved 9;\n", "FIELD_NO_DELETE"),
        ("  bytes content = 1;", "  string content = 1;", "FIELD_SAME_TYPE"),
    ],
    ids=["renamed", "removed", "retyped"],
)
def test_incompatible_changes_fail_breaking(tmp_path: Path, old: str, new: str, rule: str) -> None:
    result = check_proto.breaking(check_proto.IMAGE, workspace(tmp_path, (old, new)))
    assert not result.ok
    assert rule in result.output


def test_an_added_field_is_compatible(tmp_path: Path) -> None:
    edit = (
        "  string expected_bucket_owner = 22;\n}",
        "  string expected_bucket_owner = 22;\n  // A new field.\n  string added = 23;\n}",
    )
    result = check_proto.breaking(check_proto.IMAGE, workspace(tmp_path, edit))
    assert result.ok, result.output
