"""Documentation that works as written: every shell block of README.md and docs/ runs (see
tests/doc_blocks.py for how), or says why it cannot run here."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import doc_blocks
from tests.doc_blocks import DOCUMENTS, ROOT, Block

#: Documents with at least one block to run.
RUNNABLE = [doc for doc in DOCUMENTS if any(b.how != "skip" for b in doc_blocks.shell_blocks(doc))]


def test_every_file_block_names_its_file() -> None:
    for document in DOCUMENTS:
        for block in doc_blocks.blocks(document):
            if block.how == "file":
                assert block.why and "/" not in block.why, f"{block.where}: file NAME?"


@pytest.mark.parametrize("document", RUNNABLE, ids=lambda p: str(p.relative_to(ROOT)))
@pytest.mark.timeout(900)
def test_the_document_runs_as_written(document: Path, tmp_path: Path) -> None:
    finished = doc_blocks.run(document, tmp_path, timeout=840)
    assert finished.returncode == 0, (
        f"{doc_blocks.last_block(finished.stderr)} failed (exit {finished.returncode}):\n"
        f"{finished.stdout[-4000:]}\n{finished.stderr[-8000:]}"
    )
    assert "::doc-test done" in finished.stderr


@pytest.mark.parametrize(
    "block",
    [b for doc in DOCUMENTS for b in doc_blocks.shell_blocks(doc)],
    ids=lambda b: b.where,
)
def test_every_shell_block_runs_or_says_why_not(block: Block) -> None:
    assert block.how in ("run", "skip", "background"), f"{block.where}: mark {block.how!r}?"
    if block.how == "skip":
        assert len(block.why) >= 10, f"{block.where}: a skipped block must say why"


def test_the_mark_and_fences_are_read(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "text\n\n```sh\necho one\n```\n\n<!-- doc-test: skip: needs a Docker engine -->\n"
        "```bash\ndocker build .\n```\n\n<!-- doc-test: background -->\n```sh\nmake run\n```\n"
        "```yaml\na: 1\n```\n  ```sh\n  indented\n  ```\n"
    )
    found = doc_blocks.blocks(page)
    assert [(b.line, b.language, b.how, b.why, b.text) for b in found] == [
        (3, "sh", "run", "", "echo one\n"),
        (8, "bash", "skip", "needs a Docker engine", "docker build .\n"),
        (13, "sh", "background", "", "make run\n"),
        (16, "yaml", "run", "", "a: 1\n"),
        (19, "sh", "run", "", "indented\n"),
    ]


def test_helm_install_flags_that_need_a_cluster_are_dropped() -> None:
    arguments = ["--install", "uploads", "chart", "--wait", "--timeout", "5m", "--set", "a=b"]
    assert doc_blocks._template_arguments(arguments) == ["uploads", "chart", "--set", "a=b"]
    assert doc_blocks._template_arguments(["x", "c", "--timeout=5m", "-n", "ns"]) == [
        "x",
        "c",
        "-n",
        "ns",
    ]
