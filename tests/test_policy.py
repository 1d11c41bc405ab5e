"""The authorization policy: decisions, strict validation, sizes, and reloading from disk."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import pytest

from gateway.security.policy import (
    MAX_POLICY_BYTES,
    OPERATIONS,
    Decision,
    Policy,
    PolicyError,
    PolicyFile,
    parse_size,
)

WRITER = "spiffe://cluster.local/ns/ingest/sa/writer"

POLICY = f"""\
version: 1
principals:
  "{WRITER}":
    - operations: [CreateMultipartUpload, UploadPart, CompleteMultipartUpload,
                   AbortMultipartUpload, ListParts, ListMultipartUploads]
      buckets: ["ingest-*", exact]
      prefixes: ["raw/", "tmp/"]
      max_part_size: 1KiB
  batch-job:
    - operations: ["*"]
      buckets: [archive]
  copier:
    - operations: [UploadPartCopy]
      buckets: [dest]
      prefixes: [out/]
    - operations: [UploadPartCopy]
      buckets: [src]
      prefixes: [in/]
  big:
    - operations: [UploadPart]
      buckets: [b]
      max_part_size: 10
    - operations: [UploadPart]
      buckets: [b]
      prefixes: [large/]
      max_part_size: 100
  "*":
    - operations: [ListMultipartUploads]
      buckets: [shared]
"""


@pytest.fixture
def policy() -> Policy:
    return Policy.from_text(POLICY)


def allowed(decision: Decision) -> bool:
    assert isinstance(decision, Decision)
    assert (decision.reason == "") == decision.allowed
    return decision.allowed


# --- decisions ---------------------------------------------------------------------------------


def test_operations_are_the_eleven_rpcs() -> None:
    assert set(OPERATIONS) == {
        "WriteObject",
        "StartResumableWrite",
        "QueryWriteStatus",
        "CancelResumableWrite",
        "CreateMultipartUpload",
        "UploadPart",
        "UploadPartCopy",
        "CompleteMultipartUpload",
        "AbortMultipartUpload",
        "ListParts",
        "ListMultipartUploads",
    }


def test_listed_operations_are_allowed_and_others_denied(policy: Policy) -> None:
    for op in ("CreateMultipartUpload", "CompleteMultipartUpload", "AbortMultipartUpload"):
        assert allowed(policy.check(WRITER, op, "ingest-1", "raw/a"))
    assert allowed(policy.check(WRITER, "ListParts", "ingest-1", "raw/a"))
    assert allowed(policy.check(WRITER, "UploadPart", "ingest-1", "raw/a", part_size=1))
    decision = policy.check(WRITER, "UploadPartCopy", "ingest-1", "raw/a")
    assert not allowed(decision)
    assert decision.reason == (
        f'principal "{WRITER}" may not UploadPartCopy on bucket "ingest-1" key "raw/a"'
    )


def test_unknown_principal_is_denied(policy: Policy) -> None:
    decision = policy.check("stranger", "CreateMultipartUpload", "ingest-1", "raw/a")
    assert not allowed(decision)
    assert '"stranger"' in decision.reason


def test_bucket_globs_and_exact_names(policy: Policy) -> None:
    assert allowed(policy.check(WRITER, "ListParts", "ingest-", "raw/a"))
    assert allowed(policy.check(WRITER, "ListParts", "ingest-eu-1", "raw/a"))
    assert allowed(policy.check(WRITER, "ListParts", "exact", "raw/a"))
    assert not allowed(policy.check(WRITER, "ListParts", "exactly", "raw/a"))
    assert not allowed(policy.check(WRITER, "ListParts", "my-ingest-1", "raw/a"))
    assert not allowed(policy.check(WRITER, "ListParts", "Ingest-1", "raw/a"))  # case matters


def test_key_prefixes(policy: Policy) -> None:
    assert allowed(policy.check(WRITER, "ListParts", "ingest-1", "tmp/x"))
    assert allowed(policy.check(WRITER, "ListParts", "ingest-1", "raw/"))
    decision = policy.check(WRITER, "ListParts", "ingest-1", "raw")
    assert not allowed(decision)
    assert decision.reason.endswith('bucket "ingest-1" key "raw"')
    assert not allowed(policy.check(WRITER, "ListParts", "ingest-1", "cooked/raw/x"))
    no_key = policy.check(WRITER, "ListParts", "ingest-1")
    assert not allowed(no_key)
    assert "without a key" in no_key.reason


def test_star_operation_and_every_key(policy: Policy) -> None:
    for op in OPERATIONS:
        assert allowed(
            policy.check("batch-job", op, "archive", "any/key", prefix="", part_size=None)
        ), op
    assert not allowed(policy.check("batch-job", "ListParts", "other", "any/key"))
    assert allowed(policy.check_copy_source("batch-job", "archive", "x"))


def test_star_principal_applies_to_everyone_authenticated(policy: Policy) -> None:
    assert allowed(policy.check("stranger", "ListMultipartUploads", "shared"))
    assert allowed(policy.check(WRITER, "ListMultipartUploads", "shared", prefix="any"))
    assert not allowed(policy.check("stranger", "ListParts", "shared", "k"))
    assert not allowed(policy.check("", "ListMultipartUploads", "shared"))
    assert "*" in policy.principals
    assert WRITER in policy.principals


def test_listing_prefix_must_stay_inside_the_grant(policy: Policy) -> None:
    assert allowed(policy.check(WRITER, "ListMultipartUploads", "ingest-1", prefix="raw/"))
    assert allowed(policy.check(WRITER, "ListMultipartUploads", "ingest-1", prefix="raw/2024/"))
    for prefix in (None, "", "ra", "cooked/"):
        decision = policy.check(WRITER, "ListMultipartUploads", "ingest-1", prefix=prefix)
        assert not allowed(decision), prefix
        assert decision.reason.endswith(f'with prefix "{prefix or ""}"')
    # A grant for every key allows any listing prefix.
    assert allowed(policy.check("batch-job", "ListMultipartUploads", "archive", prefix="x/"))
    assert allowed(policy.check("batch-job", "ListMultipartUploads", "archive"))


def test_max_part_size(policy: Policy) -> None:
    assert allowed(policy.check(WRITER, "UploadPart", "ingest-1", "raw/a", part_size=1024))
    assert allowed(policy.check(WRITER, "UploadPart", "ingest-1", "raw/a", part_size=0))
    too_big = policy.check(WRITER, "UploadPart", "ingest-1", "raw/a", part_size=1025)
    assert not allowed(too_big)
    assert "1025 bytes" in too_big.reason
    assert "1024 bytes" in too_big.reason
    unknown = policy.check(WRITER, "UploadPart", "ingest-1", "raw/a", part_size=None)
    assert not allowed(unknown)
    assert "unknown size" in unknown.reason
    # The limit is for UploadPart only.
    assert allowed(policy.check(WRITER, "CompleteMultipartUpload", "ingest-1", "raw/a"))
    # No limit: any size, known or not.
    assert allowed(policy.check("batch-job", "UploadPart", "archive", "k", part_size=10**12))
    assert allowed(policy.check("batch-job", "UploadPart", "archive", "k"))


def test_max_part_size_of_any_matching_grant(policy: Policy) -> None:
    assert allowed(policy.check("big", "UploadPart", "b", "large/x", part_size=100))
    assert not allowed(policy.check("big", "UploadPart", "b", "large/x", part_size=101))
    assert not allowed(policy.check("big", "UploadPart", "b", "small/x", part_size=11))
    assert allowed(policy.check("big", "UploadPart", "b", "small/x", part_size=10))


def test_copy_source(policy: Policy) -> None:
    assert allowed(policy.check("copier", "UploadPartCopy", "dest", "out/x"))
    assert allowed(policy.check_copy_source("copier", "src", "in/y"))
    denied = policy.check_copy_source("copier", "src", "secret/y")
    assert not allowed(denied)
    assert (
        denied.reason
        == 'principal "copier" may not UploadPartCopy from bucket "src" key "secret/y"'
    )
    assert not allowed(policy.check_copy_source("copier", "other", "in/y"))
    # Other operations on the source bucket do not grant reading it as a copy source.
    assert not allowed(policy.check_copy_source(WRITER, "ingest-1", "raw/a"))


def test_unknown_operation_is_a_caller_bug(policy: Policy) -> None:
    with pytest.raises(ValueError, match="unknown operation"):
        policy.check(WRITER, "PutObject", "ingest-1", "raw/a")
    with pytest.raises(ValueError, match="unknown operation"):
        policy.check(WRITER, "*", "ingest-1", "raw/a")


def test_empty_principals_denies_everything() -> None:
    policy = Policy.from_text("version: 1\nprincipals: {}\n")
    assert policy.principals == frozenset()
    for op in OPERATIONS:
        assert not allowed(policy.check("anyone", op, "b", "k"))


def test_reason_quotes_control_characters(policy: Policy) -> None:
    reason = policy.check("evil\n", "ListParts", "b", 'k"\x1b').reason
    assert "\n" not in reason
    assert "\x1b" not in reason
    assert '"evil\\n"' in reason


# --- validation --------------------------------------------------------------------------------


def grant(body: str) -> str:
    return f"version: 1\nprincipals:\n  batch-job:\n    - {body}\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "must be a mapping"),
        ("- 1\n", "must be a mapping"),
        ("principals: {}\n", "missing key version"),
        ("version: 1\n", "missing key principals"),
        ("version: 2\nprincipals: {}\n", "version: must be 1, not 2"),
        ("version: '1'\nprincipals: {}\n", "version: must be 1"),
        ("version: true\nprincipals: {}\n", "version: must be 1"),
        ("version: 1\nprincipals: {}\nextra: 1\n", "extra: unknown key"),
        ("version: 1\nprincipals: []\n", "principals: must be a mapping"),
        ("version: 1\nprincipals:\n", "principals: must be a mapping"),
        ("version: 1\nprincipals:\n  '': []\n", "non-empty string"),
        ("version: 1\nprincipals:\n  1: []\n", "non-empty string, not 1"),
        ("version: 1\nprincipals:\n  'ns/*': []\n", "matched exactly"),
        ("version: 1\nprincipals:\n  a: {}\n", 'principals["a"]: must be a list of grants'),
        ("version: 1\nprincipals:\n  a: [x]\n", 'principals["a"][0]: a grant must be a mapping'),
        (
            grant("{operations: ['*'], bukets: [b]}"),
            'principals["batch-job"][0].bukets: unknown key',
        ),
        (grant("{operations: ['*']}"), 'principals["batch-job"][0]: missing key buckets'),
        (grant("{buckets: [b]}"), "missing key operations"),
        (grant("{operations: [UplodPart], buckets: [b]}"), "operations[0]: unknown operation"),
        (grant("{operations: ['*', 3], buckets: [b]}"), "operations[1]: must be a string"),
        (grant("{operations: [], buckets: [b]}"), "operations: must not be empty"),
        (grant("{operations: UploadPart, buckets: [b]}"), "operations: must be a list"),
        (grant("{operations: ['*'], buckets: b}"), "buckets: must be a list"),
        (grant("{operations: ['*'], buckets: []}"), "buckets: must not be empty"),
        (grant("{operations: ['*'], buckets: ['']}"), "buckets[0]: must not be empty"),
        (grant("{operations: ['*'], buckets: [{}]}"), "buckets[0]: must be a string"),
        (grant("{operations: ['*'], buckets: [b], prefixes: raw/}"), "prefixes: must be a list"),
        (grant("{operations: ['*'], buckets: [b], prefixes: []}"), "at least one prefix"),
        (grant("{operations: ['*'], buckets: [b], prefixes: [1]}"), "prefixes[0]: must be a"),
        (grant("{operations: ['*'], buckets: [b], max_part_size: 0}"), "must be positive"),
        (grant("{operations: ['*'], buckets: [b], max_part_size: -5}"), "must be positive"),
        (grant("{operations: ['*'], buckets: [b], max_part_size: 12XB}"), "is not a size"),
        (grant("{operations: ['*'], buckets: [b], max_part_size: 1.5}"), "max_part_size: must be"),
        (grant("{operations: ['*'], buckets: [b], 7: x}"), "key 7 is not a string"),
        ("version: 1\nprincipals:\n  a: []\n  a: []\n", 'line 4: duplicate key "a"'),
        ("version: 1\nprincipals: [\n", "invalid YAML at line 3, column 1"),
        ("!!python/object/apply:os.system ['true']\n", "invalid YAML"),
        ("[" * 100_000, "invalid YAML"),
    ],
)
def test_invalid_policies_raise_one_clear_error(text: str, message: str) -> None:
    with pytest.raises(PolicyError) as info:
        Policy.from_text(text, "policy.yaml")
    assert message in str(info.value)
    assert str(info.value).startswith("policy.yaml: ")
    assert "\n" not in str(info.value)


def test_valid_optional_forms() -> None:
    policy = Policy.from_text(
        grant("{operations: [ListParts], buckets: [b], prefixes: [''], max_part_size: 5}")
    )
    assert allowed(policy.check("batch-job", "ListParts", "b", "anything"))


def test_oversize_policy_is_refused(tmp_path: Path) -> None:
    padding = "#" * MAX_POLICY_BYTES + "\n"
    with pytest.raises(PolicyError, match="larger than"):
        Policy.from_text(padding + "version: 1\nprincipals: {}\n")
    path = tmp_path / "policy.yaml"
    path.write_text(padding + "version: 1\nprincipals: {}\n")
    with pytest.raises(PolicyError, match="larger than"):
        Policy.load(path)
    path.write_text("#" * (MAX_POLICY_BYTES - 40) + "\nversion: 1\nprincipals: {}\n")
    assert Policy.load(path).principals == frozenset()


def test_load_reads_a_file_and_names_it_in_errors(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    assert WRITER in Policy.load(path).principals
    path.write_text("version: 3\nprincipals: {}\n")
    with pytest.raises(PolicyError, match=f"^{path}: version"):
        Policy.load(str(path))
    with pytest.raises(PolicyError, match="cannot read"):
        Policy.load(tmp_path / "missing.yaml")
    path.write_bytes(b"version: 1\nprincipals: {\xff: []}\n")
    with pytest.raises(PolicyError, match="not UTF-8"):
        Policy.load(path)


# --- sizes -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "size"),
    [
        (1, 1),
        (128 * 1024**2, 128 * 1024**2),
        ("512", 512),
        ("10B", 10),
        ("1KiB", 1024),
        ("128MiB", 128 * 1024**2),
        ("2 GiB", 2 * 1024**3),
        ("1TiB", 1024**4),
        ("1KB", 1024),
        ("5MB", 5 * 1024**2),
        ("3GB", 3 * 1024**3),
        ("2TB", 2 * 1024**4),
        (" 7 MiB ", 7 * 1024**2),
        ("1.5MiB", 1536 * 1024),
        ("1mib", 1024**2),
        ("1 M", 1024**2),
    ],
)
def test_parse_size(value: object, size: int) -> None:
    assert parse_size(value) == size


@pytest.mark.parametrize(
    "value",
    [
        0,
        -1,
        "0MiB",
        "",
        "MiB",
        "1.1B",
        "1 MiBs",
        "-1",
        "1e6",
        "١٢",
        True,
        1.0,
        None,
        [1],
        "9" * 5000,
    ],
)
def test_parse_size_rejects(value: object) -> None:
    with pytest.raises(PolicyError):
        parse_size(value)


# --- reloading ---------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def only(principal: str) -> str:
    return f"version: 1\nprincipals:\n  {principal}:\n    - {{operations: ['*'], buckets: [b]}}\n"


def replace(path: Path, text: str) -> None:
    """Write a new version as a new file (a new inode), as editors and deploy tools do."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def test_policy_file_reloads_after_the_interval(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.security.policy")
    path = tmp_path / "policy.yaml"
    path.write_text(only("alice"))
    clock = FakeClock()
    file = PolicyFile(path, check_interval=2.0, clock=clock)
    first = file.policy
    assert first.principals == {"alice"}

    replace(path, only("bob"))
    clock.now += 1.9
    assert file.policy is first  # not checked yet: the interval has not passed
    clock.now += 0.1
    assert file.policy.principals == {"bob"}
    assert file.reloads == 1
    assert file.reload_failures == 0
    assert any(r.levelno == logging.INFO and "reloaded" in r.message for r in caplog.records)

    second = file.policy
    clock.now += 10
    assert file.policy is second  # unchanged on disk: not reparsed
    assert file.reloads == 1


def test_policy_file_notices_an_in_place_rewrite(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(only("alice"))
    clock = FakeClock()
    file = PolicyFile(path, check_interval=0.5, clock=clock)
    inode = path.stat().st_ino
    path.write_text(only("carol"))  # same inode, same size: only the mtime tells
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert path.stat().st_ino == inode
    clock.now += 0.5
    assert file.policy.principals == {"carol"}


def test_bad_reload_keeps_the_old_policy_and_logs_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.security.policy")
    path = tmp_path / "policy.yaml"
    path.write_text(only("alice"))
    clock = FakeClock()
    file = PolicyFile(path, check_interval=1.0, clock=clock)
    good = file.policy

    def errors() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.levelno == logging.ERROR]

    replace(path, "version: 1\nprincipals:\n  alice: [{operations: [Nope], buckets: [b]}]\n")
    for _ in range(3):
        clock.now += 1.0
        assert file.policy is good
    assert file.reload_failures == 1
    assert len(errors()) == 1
    assert "unknown operation" in errors()[0].message

    replace(path, "version: 1\nprincipals: [\n")  # a different bad version: one more error
    clock.now += 1.0
    assert file.policy is good
    assert file.reload_failures == 2
    assert len(errors()) == 2

    path.unlink()  # missing: one more
    clock.now += 1.0
    clock.now += 1.0
    assert file.policy is good
    clock.now += 1.0
    assert file.policy is good
    assert file.reload_failures == 3
    assert len(errors()) == 3
    assert "cannot read" in errors()[2].message

    replace(path, only("dave"))
    clock.now += 1.0
    assert file.policy.principals == {"dave"}
    assert file.reloads == 1
    assert file.reload_failures == 3


def test_initial_file_must_be_good(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read"):
        PolicyFile(tmp_path / "missing.yaml")
    path = tmp_path / "policy.yaml"
    path.write_text("version: 1\n")
    with pytest.raises(PolicyError, match="missing key principals"):
        PolicyFile(path)


def test_configmap_symlink_swap_is_picked_up(tmp_path: Path) -> None:
    # kubelet's layout: policy.yaml -> ..data/policy.yaml, ..data -> ..<timestamp>/
    mount = tmp_path / "mount"
    mount.mkdir()

    def publish(version: str, text: str) -> None:
        directory = mount / version
        directory.mkdir()
        (directory / "policy.yaml").write_text(text)
        tmp_link = mount / "..data_tmp"
        tmp_link.symlink_to(version)
        os.replace(tmp_link, mount / "..data")

    publish("..2024_01_01", only("alice"))
    (mount / "policy.yaml").symlink_to("..data/policy.yaml")
    clock = FakeClock()
    file = PolicyFile(mount / "policy.yaml", check_interval=2.0, clock=clock)
    assert file.policy.principals == {"alice"}

    publish("..2024_01_02", only("erin"))
    shutil.rmtree(mount / "..2024_01_01")
    clock.now += 2.0
    assert file.policy.principals == {"erin"}
    assert file.reloads == 1
    assert file.reload_failures == 0


def test_check_interval_zero_checks_every_time(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(only("alice"))
    file = PolicyFile(path, check_interval=0, clock=FakeClock())
    replace(path, only("frank"))
    assert file.policy.principals == {"frank"}
    with pytest.raises(ValueError, match="check_interval"):
        PolicyFile(path, check_interval=-1)


def test_failure_after_returning_to_the_loaded_file_logs_again(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    aside = tmp_path / "aside.yaml"
    path.write_text(only("alice"))
    clock = FakeClock()
    file = PolicyFile(path, check_interval=1.0, clock=clock)
    loaded = file.policy
    for expected_failures in (1, 2):
        path.rename(aside)  # missing
        clock.now += 1.0
        assert file.policy is loaded
        assert file.reload_failures == expected_failures
        aside.rename(path)  # the very file that is loaded: nothing to reload
        clock.now += 1.0
        assert file.policy is loaded
        assert file.reloads == 0
