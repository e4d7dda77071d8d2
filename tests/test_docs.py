"""The references in docs/ say what the code does: each is regenerated here and compared with the
committed file, so a change to Settings, a route, a Struct or a problem type that leaves the docs
behind fails with the command that brings them up to date."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

import service.reference.__main__ as reference
from service.reference import http
from service.reference.configuration import REGENERATE, configuration_markdown

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_the_configuration_reference_matches_settings() -> None:
    committed = (DOCS / "configuration.md").read_text()
    assert committed == configuration_markdown(), f"docs/configuration.md is out of date: run `{REGENERATE}`"


def test_the_http_reference_matches_the_routes_structs_and_problems() -> None:
    committed = (DOCS / "http.md").read_text()
    assert committed == http.fill(committed, http.sections()), f"docs/http.md is out of date: run `{http.REGENERATE}`"


def test_the_regeneration_checks_and_rewrites_exactly_the_stale_pages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = tmp_path / "docs"
    shutil.copytree(DOCS, docs)
    monkeypatch.setattr(reference, "DOCS", docs)
    runner = CliRunner()
    assert runner.invoke(reference.main, ["--check"]).exit_code == 0
    (docs / "configuration.md").write_text("stale\n")
    checked = runner.invoke(reference.main, ["--check"])
    stale = "docs/configuration.md is out of date: run python -m service.reference\n"
    assert (checked.exit_code, checked.output) == (1, stale)
    assert (docs / "configuration.md").read_text() == "stale\n"
    rewritten = runner.invoke(reference.main, [])
    assert (rewritten.exit_code, rewritten.output) == (0, "wrote docs/configuration.md\n")
    assert (docs / "configuration.md").read_text() == (DOCS / "configuration.md").read_text()
    assert "--check" in runner.invoke(reference.main, ["--help"]).output


def test_a_missing_section_marker_is_an_error_not_a_silent_skip() -> None:
    with pytest.raises(ValueError, match="routes"):
        http.fill("# no markers\n", {"routes": "| table |"})


def test_the_docs_link_only_inside_the_repository() -> None:
    readme = (DOCS.parent / "README.md").read_text()
    assert "../shared" not in readme
    for page in ("docs/http.md", "docs/configuration.md", "docs/operating.md"):
        assert f"({page})" in readme
