"""Who may do what: a per-principal authorization policy, read from a YAML file.

The format::

    version: 1
    principals:
      "spiffe://cluster.local/ns/ingest/sa/writer":   # a principal name (mTLS cert or token file)
        - operations: [CreateMultipartUpload, UploadPart, CompleteMultipartUpload,
                       AbortMultipartUpload, ListParts]
          buckets: ["ingest-*"]      # exact names or globs (fnmatchcase: *, ?, [...])
          prefixes: ["raw/"]         # literal key prefixes; omitted or [""] = every key
          max_part_size: 128MiB      # optional, UploadPart only (see below)
      batch-job:
        - operations: ["*"]          # every RPC
          buckets: [archive]
      "*":                           # optional (quoted): grants for every authenticated principal
        - operations: [ListMultipartUploads]
          buckets: [shared]

A call is allowed when ANY grant of the principal, or of ``"*"``, allows it; everything else is
denied (an empty ``principals: {}`` denies everything). A grant allows a call when it lists the
operation (or ``"*"``), one of its ``buckets`` matches the bucket, and:

- for object operations (all but ``ListMultipartUploads``), the key starts with one of
  ``prefixes``;
- for ``ListMultipartUploads``, the request's listing prefix (``""`` when none) starts with one of
  ``prefixes``: a caller limited to ``raw/`` must list with a prefix ``raw/...``, or it would see
  other keys; a grant for every key allows any listing prefix;
- for ``UploadPart`` with ``max_part_size`` set, the part's declared size (``content_length``) is
  known and at most ``max_part_size``. A size is a whole number of bytes, or a string with a
  binary (``KiB``, ``MiB``, ``GiB``, ``TiB``) or decimal (``KB``, ``MB``, ``GB``, ``TB``) suffix.

``UploadPartCopy`` is checked twice by the caller: :meth:`Policy.check` for the destination and
:meth:`Policy.check_copy_source` for the source, which needs a grant listing ``UploadPartCopy``
(or ``"*"``) for the source bucket and key.

Principal names are matched exactly; ``"*"`` is the only name that may contain ``*``, and it never
applies to the empty (unauthenticated) principal.

Loading is strict: the file is at most :data:`MAX_POLICY_BYTES`, parsed with ``yaml.safe_load``;
a wrong ``version``, an unknown or duplicate key, an unknown operation, a value of the wrong type
or a non-positive size raise one :class:`PolicyError` naming where it is, e.g.
``policy.yaml: principals["batch-job"][0].bukets: unknown key; ...``.

:class:`PolicyFile` keeps a policy in step with its file (a Kubernetes ConfigMap, say), checking at
most once per interval and keeping the previous policy when the new file is bad.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import NoReturn

import yaml

from gateway import units, watch
from gateway.config import ConfigError
from gateway.units import MiB
from gateway.v1 import upload_service_pb2
from gateway.watch import read_capped

logger = logging.getLogger(__name__)

#: The largest policy file accepted, bytes.
MAX_POLICY_BYTES = MiB

#: The RPCs of the UploadService: the operations a grant may list (besides ``"*"``).
OPERATIONS: tuple[str, ...] = tuple(
    method.name
    for method in upload_service_pb2.DESCRIPTOR.services_by_name["UploadService"].methods
)
ANY = "*"
LIST_UPLOADS = "ListMultipartUploads"
UPLOAD_PART = "UploadPart"
UPLOAD_PART_COPY = "UploadPartCopy"
for _name in (LIST_UPLOADS, UPLOAD_PART, UPLOAD_PART_COPY):
    if _name not in OPERATIONS:  # pragma: no cover - the proto and this module disagree
        raise RuntimeError(f"UploadService has no {_name} RPC")

_GRANT_KEYS = ("operations", "buckets", "prefixes", "max_part_size")
_GLOB_CHARS = frozenset("*?[")


class PolicyError(ConfigError):
    """A policy cannot be read, parsed or validated."""


@dataclass(frozen=True)
class Decision:
    """The answer to one check: allowed, or denied with a reason fit to show the caller."""

    allowed: bool
    #: Why the call is denied ("" when allowed); names only the principal, operation, bucket,
    #: key or listing prefix and sizes.
    reason: str


_ALLOW = Decision(True, "")


def parse_size(value: object) -> int:
    """A positive size in bytes from an int or a string such as ``"128MiB"`` or ``"1 GB"``
    (:func:`gateway.units.parse_size`: every unit is binary)."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise PolicyError(
            f'must be a whole number of bytes or a string such as "128MiB", not {_show(value)}'
        )
    if isinstance(value, int):
        size = value
    else:
        try:
            size = units.parse_size(value)
        except ValueError:
            raise PolicyError(f"{_show(value)} is not a size such as 128MiB or 1048576") from None
    if size <= 0:
        raise PolicyError(f"must be positive, not {_show(value)}")
    return size


@dataclass(frozen=True, slots=True)
class _Grant:
    operations: frozenset[str]
    exact_buckets: frozenset[str]
    bucket_globs: tuple[re.Pattern[str], ...]
    prefixes: tuple[str, ...]
    every_key: bool
    max_part_size: int | None

    def allows_bucket(self, bucket: str) -> bool:
        return bucket in self.exact_buckets or any(g.match(bucket) for g in self.bucket_globs)

    def allows_key(self, key: str) -> bool:
        """Whether ``key`` (or a listing prefix) lies under one of the grant's prefixes."""
        return self.every_key or key.startswith(self.prefixes)


class Policy:
    """An immutable, validated policy. Build with :meth:`from_text` or :meth:`load`."""

    def __init__(self, grants: Mapping[str, Sequence[_Grant]]) -> None:
        self._principals = frozenset(grants)
        # principal -> operation -> grants listing it (or "*"), so a check scans only candidates.
        self._table: dict[str, dict[str, tuple[_Grant, ...]]] = {
            principal: {
                op: tuple(g for g in principal_grants if op in g.operations or ANY in g.operations)
                for op in OPERATIONS
            }
            for principal, principal_grants in grants.items()
        }

    @classmethod
    def from_text(cls, text: str, source: str = "<policy>") -> Policy:
        """Parse and validate a policy document; ``source`` prefixes error messages."""
        if len(text) > MAX_POLICY_BYTES or (
            len(text.encode("utf-8", "surrogatepass")) > MAX_POLICY_BYTES
        ):
            raise PolicyError(f"{source}: larger than {MAX_POLICY_BYTES} bytes")
        try:
            data = yaml.safe_load(text)
            duplicate = _duplicate_key(yaml.compose(text, Loader=yaml.SafeLoader))
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = exc.problem or exc.context or "cannot parse"
            raise PolicyError(f"{source}: invalid YAML{where}: {problem}") from None
        except yaml.YAMLError as exc:
            raise PolicyError(f"{source}: invalid YAML: {exc}") from None
        except RecursionError:
            raise PolicyError(f"{source}: invalid YAML: nested too deeply") from None
        if duplicate is not None:
            key, line = duplicate
            raise PolicyError(f"{source}: line {line}: duplicate key {_show(key)}")
        return cls(_parse(data, source))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Policy:
        """Read, parse and validate the policy file at ``path``."""
        name = os.fspath(path)
        return cls.from_text(_read_file(name), name)

    @property
    def principals(self) -> frozenset[str]:
        """The principal names the policy mentions (``"*"`` included when present)."""
        return self._principals

    def check(
        self,
        principal: str,
        operation: str,
        bucket: str,
        key: str | None = None,
        *,
        prefix: str | None = None,
        part_size: int | None = None,
    ) -> Decision:
        """Whether ``principal`` may call ``operation``.

        ``key`` is the object key of object operations (a missing key is denied); ``prefix`` the
        listing prefix of ListMultipartUploads (None is ""); ``part_size`` the declared
        content_length of UploadPart (None: unknown). Raises ValueError for an operation that is
        not an UploadService RPC: that is a bug of the caller, not a denial.
        """
        if operation not in OPERATIONS:
            raise ValueError(f"unknown operation {operation!r}")
        who = f"principal {_q(principal)} may not {operation} on bucket {_q(bucket)}"
        grants = [g for g in self._grants(principal, operation) if g.allows_bucket(bucket)]
        if operation == LIST_UPLOADS:
            listing = prefix or ""
            if any(g.allows_key(listing) for g in grants):
                return _ALLOW
            return Decision(False, f"{who} with prefix {_q(listing)}")
        if key is None:
            return Decision(False, f"{who} without a key")
        grants = [g for g in grants if g.allows_key(key)]
        who = f"{who} key {_q(key)}"
        if not grants:
            return Decision(False, who)
        if operation != UPLOAD_PART:
            return _ALLOW
        limits = [g.max_part_size for g in grants]
        if None in limits:
            return _ALLOW
        largest = max(limit for limit in limits if limit is not None)
        if part_size is None or part_size < 0:
            unknown = "with a part of unknown size (it must be declared"
            return Decision(False, f"{who} {unknown}, at most {largest} bytes)")
        if part_size <= largest:
            return _ALLOW
        return Decision(False, f"{who} with a part of {part_size} bytes (at most {largest} bytes)")

    def check_copy_source(self, principal: str, bucket: str, key: str) -> Decision:
        """Whether ``principal`` may read ``bucket``/``key`` as the source of UploadPartCopy.

        ``bucket`` (a name or an access point ARN) and ``key`` are the object S3 reads, decoded
        (:func:`.guard.parse_copy_source`), never the encoded ``copy_source`` string.
        """
        for grant in self._grants(principal, UPLOAD_PART_COPY):
            if grant.allows_bucket(bucket) and grant.allows_key(key):
                return _ALLOW
        return Decision(
            False,
            f"principal {_q(principal)} may not {UPLOAD_PART_COPY} from bucket {_q(bucket)} "
            f"key {_q(key)}",
        )

    def _grants(self, principal: str, operation: str) -> Iterable[_Grant]:
        own = self._table.get(principal, {}).get(operation, ())
        if not principal or principal == ANY:
            return own
        return own + self._table.get(ANY, {}).get(operation, ())


class PolicyFile(watch.Watched[Policy]):
    """A policy file that is reloaded when it changes on disk (:class:`gateway.watch.Watched`).

    A Kubernetes ConfigMap update swaps a ``..data`` symlink to a new directory, so each check
    re-resolves the path and compares the stat signature of the file it leads to. :attr:`policy`
    is meant to be read on every call: between checks (at most one per ``check_interval`` seconds
    of ``clock``) it costs a clock reading. A check stats the file, and reads it when it changed:
    a little blocking I/O on the caller's thread.

    A new file that is missing, unreadable or invalid leaves the previous policy in force; each
    such change is logged once, as an error, and counted in :attr:`reload_failures`. Successful
    reloads are logged and counted in :attr:`reloads`.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        check_interval: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Load the file at once; raises PolicyError when it is missing or invalid."""
        self.path = os.fspath(path)
        super().__init__(
            (self.path,),
            lambda: Policy.from_text(_read_file(self.path), self.path),
            what="authorization policy",
            kept="policy",
            log=logger,
            error=PolicyError,
            describe=lambda policy: f" ({len(policy.principals)} principals)",
            check_interval=check_interval,
            clock=clock,
        )

    @property
    def policy(self) -> Policy:
        """The policy in force, reloaded first if the interval passed and the file changed."""
        return self.value


def _read_file(path: str) -> str:
    """The text of the file ``path`` leads to, read through one descriptor."""
    _, data = read_capped(path, MAX_POLICY_BYTES, what="policy", error=PolicyError)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise PolicyError(f"{path}: not UTF-8 text") from None


def _duplicate_key(root: yaml.Node | None) -> tuple[str, int] | None:
    """The first duplicate mapping key (and its line) in a composed document; safe_load would
    silently keep the last value, dropping e.g. a principal's first list of grants."""
    seen: set[int] = set()
    stack = [root] if root is not None else []
    while stack:
        node = stack.pop()
        if id(node) in seen:  # aliases share nodes
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            keys: set[tuple[str, object]] = set()
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode):
                    if (key.tag, key.value) in keys:
                        return str(key.value), key.start_mark.line + 1
                    keys.add((key.tag, key.value))
                stack.extend((value, key))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(reversed(node.value))
    return None


def _parse(data: object, source: str) -> dict[str, tuple[_Grant, ...]]:
    if not isinstance(data, dict):
        _fail(source, "", "the policy must be a mapping with keys version and principals")
    _check_keys(data, ("version", "principals"), ("version", "principals"), source, "")
    version = data["version"]
    if isinstance(version, bool) or version != 1:
        _fail(source, "version", f"must be 1, not {_show(version)}")
    principals = data["principals"]
    if not isinstance(principals, dict):
        _fail(source, "principals", "must be a mapping of principal names to lists of grants")
    grants: dict[str, tuple[_Grant, ...]] = {}
    for name, principal_grants in principals.items():
        if not isinstance(name, str) or not name:
            _fail(source, "principals", f"a name must be a non-empty string, not {_show(name)}")
        path = f"principals[{_q(name)}]"
        if name != ANY and ANY in name:
            _fail(source, path, 'principals are matched exactly: only the name "*" may contain *')
        if not isinstance(principal_grants, list):
            _fail(source, path, "must be a list of grants")
        grants[name] = tuple(
            _parse_grant(grant, source, f"{path}[{i}]") for i, grant in enumerate(principal_grants)
        )
    return grants


def _parse_grant(data: object, source: str, path: str) -> _Grant:
    if not isinstance(data, dict):
        _fail(source, path, "a grant must be a mapping with operations and buckets")
    _check_keys(data, _GRANT_KEYS, ("operations", "buckets"), source, path)
    operations = _strings(data["operations"], source, f"{path}.operations")
    for i, operation in enumerate(operations):
        if operation != ANY and operation not in OPERATIONS:
            _fail(
                source,
                f"{path}.operations[{i}]",
                f"unknown operation {_q(operation)}; expected * or one of {', '.join(OPERATIONS)}",
            )
    buckets = _strings(data["buckets"], source, f"{path}.buckets")
    prefixes = [""]
    if "prefixes" in data:
        prefixes = _strings(
            data["prefixes"],
            source,
            f"{path}.prefixes",
            empty_items=True,
            empty_list='must list at least one prefix (omit it, or use [""], for every key)',
        )
    max_part_size = None
    if "max_part_size" in data:
        try:
            max_part_size = parse_size(data["max_part_size"])
        except PolicyError as exc:
            _fail(source, f"{path}.max_part_size", str(exc))
    return _Grant(
        operations=frozenset(operations),
        exact_buckets=frozenset(b for b in buckets if not _GLOB_CHARS & set(b)),
        bucket_globs=tuple(
            re.compile(fnmatch.translate(b)) for b in buckets if _GLOB_CHARS & set(b)
        ),
        prefixes=tuple(prefixes),
        every_key="" in prefixes,
        max_part_size=max_part_size,
    )


def _strings(
    value: object,
    source: str,
    path: str,
    *,
    empty_items: bool = False,
    empty_list: str = "must not be empty",
) -> list[str]:
    """A non-empty list of strings, each non-empty too unless ``empty_items``."""
    if not isinstance(value, list):
        _fail(source, path, f"must be a list of strings, not {_show(value)}")
    if not value:
        _fail(source, path, empty_list)
    for i, item in enumerate(value):
        if not isinstance(item, str):
            _fail(source, f"{path}[{i}]", f"must be a string, not {_show(item)}")
        if not item and not empty_items:
            _fail(source, f"{path}[{i}]", "must not be empty")
    return value


def _check_keys(
    data: dict[object, object],
    allowed: Sequence[str],
    required: Sequence[str],
    source: str,
    path: str,
) -> None:
    for key in data:
        if not isinstance(key, str):
            _fail(source, path, f"key {_show(key)} is not a string")
        if key not in allowed:
            _fail(
                source,
                f"{path}.{key}" if path else key,
                f"unknown key; expected one of {', '.join(allowed)}",
            )
    for key in required:
        if key not in data:
            _fail(source, path, f"missing key {key}")


def _fail(source: str, path: str, message: str) -> NoReturn:
    raise PolicyError(f"{source}: {path}: {message}" if path else f"{source}: {message}")


def _q(text: str) -> str:
    """A string in double quotes with control characters escaped, for messages and logs."""
    return json.dumps(text, ensure_ascii=False)


def _show(value: object) -> str:
    """A short rendering of a value from the file, for error messages."""
    text = _q(value) if isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
