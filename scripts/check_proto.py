"""Check proto/ with buf: lint, and breaking changes against the committed API baseline.

    python scripts/check_proto.py                     # lint + breaking (what `make test` runs)
    python scripts/check_proto.py --update-image      # accept the current API as the new baseline
    python scripts/check_proto.py --against-git origin/main   # also compare with a git ref

1. `buf lint` with the rules of buf.yaml (STANDARD + COMMENTS: every service, RPC, message,
   field, oneof, enum and enum value has a comment).
2. `buf breaking` (rule category FILE: wire, JSON and generated-code compatibility) of proto/
   against proto/buf-image.binpb, a buf image of the API as last accepted. The baseline is a
   committed file, so the check needs no git history and works the same in a fresh or shallow
   clone, in CI and offline. After a deliberate, reviewed change to the API, `--update-image`
   re-runs the breaking check against the old baseline and only then writes the new one (with
   `--allow-breaking` when the break is intended, e.g. for a new package version); commit the
   image with the .proto change so that reviewers see both.
3. `--against-git REF` additionally compares with proto/ as committed at REF (`git archive`, so
   REF must be in the clone: fetch it first in a shallow CI checkout) — for a branch, against
   main.

One exception, the narrowest buf allows us: :data:`GAINED_PRESENCE` lists the response fields
that went from implicit to explicit presence (`string etag` to `optional string etag`), so that
an empty value S3 sends ("" or 0) can be told from an absent one. buf's FILE category reports each
as FIELD_SAME_CARDINALITY; for these fields, and only in that direction, the finding is accepted
(printed, not failed). Any other finding on them, or the same one on any other field, still
fails. It is safe because:

- the wire format is the same: same number, same wire type. A reader built before the change
  decodes an explicitly sent "" or 0 as the default it always saw; a reader built after it, fed
  by an older gateway, sees the field absent, as before;
- the JSON mapping is the same, but for an empty value now written out;
- the gateway is the only writer of these response messages;
- generated code gains a presence test (Python `HasField`, Java/C# `hasX()`); in Go, direct
  reads of the struct field become pointer reads (`*string`), while the getters (`GetEtag()`),
  which the fields' readers use, are unchanged.

buf is the @bufbuild/buf npm package pinned by examples/tools/package-lock.json; `npm ci` installs
it into examples/tools/node_modules on first use (from the npm registry, by the lock file only).
Without node and npm this script fails: there is no skip, in CI or elsewhere.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parent.parent
PROTO = ROOT / "proto"
IMAGE = PROTO / "buf-image.binpb"
TOOLS_PACKAGE = ROOT / "examples" / "tools"
BUF_CACHE = ROOT / ".cache" / "buf"


#: Response fields (message, field) that gained explicit presence ("optional") on purpose: buf's
#: FIELD_SAME_CARDINALITY finding for them, from implicit to explicit presence, is accepted.
GAINED_PRESENCE = frozenset(
    {
        ("UploadPartResponse", "etag"),
        ("CopyPartResult", "etag"),
        ("CompleteMultipartUploadResponse", "etag"),
        ("Part", "etag"),
        ("Owner", "display_name"),
        ("Owner", "id"),
        ("Initiator", "id"),
        ("Initiator", "display_name"),
        ("ListPartsResponse", "next_part_number_marker"),
        ("ListMultipartUploadsResponse", "key_marker"),
        ("ListMultipartUploadsResponse", "upload_id_marker"),
        ("ListMultipartUploadsResponse", "next_key_marker"),
        ("ListMultipartUploadsResponse", "next_upload_id_marker"),
        ("ListMultipartUploadsResponse", "prefix"),
        ("ListMultipartUploadsResponse", "delimiter"),
    }
)
_GAINED_PRESENCE_FINDING = re.compile(
    r'.* : error FIELD_SAME_CARDINALITY : Field "\d+" with name "(?P<field>\w+)" on message '
    r'"(?P<message>\w+)" changed cardinality from "optional with implicit presence" to '
    r'"optional with explicit presence"\.'
)


class ToolError(Exception):
    """A tool this script needs is missing or could not be installed."""


class Result(NamedTuple):
    """A tool's exit status and its stdout + stderr."""

    returncode: int
    output: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def npm_ci(package_dir: Path) -> None:
    """`npm ci` in package_dir unless its node_modules is already installed from the current lock.

    Only what package-lock.json pins is fetched; install scripts are not run (neither buf nor the
    Node example needs them).
    """
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        raise ToolError(
            f"node and npm are required (found node={node}, npm={npm}); "
            "install Node.js 18+ with npm"
        )
    lock = package_dir / "package-lock.json"
    installed = package_dir / "node_modules" / ".package-lock.json"
    if installed.is_file() and installed.stat().st_mtime >= lock.stat().st_mtime:
        return
    print(f"npm ci in {package_dir.relative_to(ROOT)}", file=sys.stderr)
    command = [npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund"]
    done = subprocess.run(command, cwd=package_dir, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise ToolError(f"`npm ci` failed in {package_dir}:\n{done.stdout}{done.stderr}")


def buf_path() -> Path:
    """The pinned buf, installed on first use."""
    npm_ci(TOOLS_PACKAGE)
    path = TOOLS_PACKAGE / "node_modules" / ".bin" / ("buf.cmd" if os.name == "nt" else "buf")
    if not path.exists():
        raise ToolError(f"{path} is missing after npm ci")
    return path


def buf(*args: str | Path, cwd: Path = ROOT) -> Result:
    """Run buf with the repository's pinned version; its cache stays in .cache/buf."""
    env = {**os.environ, "BUF_CACHE_DIR": str(BUF_CACHE)}
    done = subprocess.run(
        [str(buf_path()), *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    return Result(done.returncode, (done.stdout + done.stderr).strip())


def version() -> str:
    return buf("--version").output


def lint(workspace: Path = ROOT) -> Result:
    """`buf lint` of the workspace (the directory holding buf.yaml). Findings are printed as
    `path(line,col) : error RULE_ID : message`, so that the rule to look up is named."""
    return buf("lint", "--error-format=msvs", cwd=workspace)


def breaking(against: Path, workspace: Path = ROOT) -> Result:
    """`buf breaking` of the workspace against an image file or a directory of .proto files,
    with the findings :data:`GAINED_PRESENCE` accepts left out (and said to be accepted)."""
    found = buf("breaking", "--error-format=msvs", "--against", against, cwd=workspace)
    return accept_gained_presence(found)


def accept_gained_presence(result: Result) -> Result:
    """``result`` without the findings :data:`GAINED_PRESENCE` accepts; ok when none other is
    left. A result that is not a list of findings (buf failed to run) is left as it is."""
    if result.ok:
        return result
    lines = result.output.splitlines()
    findings = [line for line in lines if " : error " in line]
    if not findings or len(findings) != len(lines):
        return result
    accepted = [
        line
        for line in findings
        if (match := _GAINED_PRESENCE_FINDING.fullmatch(line))
        and (match["message"], match["field"]) in GAINED_PRESENCE
    ]
    left = [line for line in findings if line not in accepted]
    for line in accepted:
        print(f"accepted (GAINED_PRESENCE): {line}")
    return Result(1 if left else 0, "\n".join(left))


def build_image(output: Path, workspace: Path = ROOT) -> Result:
    """A binary buf image of the workspace, without source info (comments and positions)."""
    return buf("build", "--exclude-source-info", "-o", output, cwd=workspace)


def proto_at(ref: str, destination: Path) -> Path:
    """proto/ as committed at the git ref, extracted into destination; returns its proto/."""
    with tempfile.TemporaryFile() as archive:
        done = subprocess.run(
            ["git", "archive", "--format=tar", ref, "proto"],
            cwd=ROOT,
            stdout=archive,
            stderr=subprocess.PIPE,
            text=False,
            check=False,
        )
        if done.returncode != 0:
            message = done.stderr.decode(errors="replace").strip()
            raise ToolError(f"cannot read proto/ at {ref!r} (is it fetched?): {message}")
        archive.seek(0)
        with tarfile.open(fileobj=archive) as tar:
            tar.extractall(destination, filter="data")
    return destination / "proto"


def _report(title: str, result: Result, hint: str) -> bool:
    if result.ok:
        print(f"{title}: ok")
        return True
    print(f"{title}: FAILED\n{result.output}\n{hint}", file=sys.stderr)
    return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--update-image",
        action="store_true",
        help=f"write {IMAGE.relative_to(ROOT)} from proto/ after checking it against the old one",
    )
    parser.add_argument(
        "--allow-breaking",
        action="store_true",
        help="with --update-image: accept a breaking change as the new baseline",
    )
    parser.add_argument(
        "--against-git",
        metavar="REF",
        action="append",
        default=[],
        help="also check for breaking changes against proto/ at this git ref (repeatable)",
    )
    args = parser.parse_args()
    try:
        print(f"buf {version()}")
        lint_ok = _report(
            "buf lint",
            lint(),
            "Fix the findings above (buf.yaml: STANDARD + COMMENTS); the .proto is the contract.",
        )
        ok = lint_ok
        if IMAGE.is_file():
            ok &= _report(
                f"buf breaking against {IMAGE.relative_to(ROOT)}",
                breaking(IMAGE),
                "proto/ breaks compatibility with the committed API baseline. Keep field names, "
                "numbers and types; add, never change or remove. If the break is intended: "
                "scripts/check_proto.py --update-image --allow-breaking, and commit the image.",
            )
        elif not args.update_image:
            print(
                f"{IMAGE.relative_to(ROOT)} is missing: run scripts/check_proto.py --update-image",
                file=sys.stderr,
            )
            ok = False
        for ref in args.against_git:
            with tempfile.TemporaryDirectory() as tmp:
                ok &= _report(
                    f"buf breaking against proto/ at {ref}",
                    breaking(proto_at(ref, Path(tmp))),
                    f"proto/ breaks compatibility with {ref}.",
                )
        if args.update_image:
            if not (ok or (lint_ok and args.allow_breaking)):
                print("not updating the image: fix the findings above first", file=sys.stderr)
                return 1
            built = build_image(IMAGE)
            if not built.ok:
                print(f"buf build failed:\n{built.output}", file=sys.stderr)
                return 1
            print(f"wrote {IMAGE.relative_to(ROOT)}: commit it with the .proto change")
            return 0
    except ToolError as error:
        print(f"check_proto: {error}", file=sys.stderr)
        return 1
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
