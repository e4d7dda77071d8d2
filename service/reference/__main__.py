"""``python -m service.reference``: rewrite docs/configuration.md and the generated sections of docs/http.md."""

from __future__ import annotations

from pathlib import Path

import click

from service.reference import http
from service.reference.configuration import configuration_markdown

DOCS = Path(__file__).resolve().parents[2] / "docs"


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--check", is_flag=True, help="Write nothing; exit 1 naming each page that is out of date.")
def main(check: bool) -> None:
    """Rewrite docs/configuration.md, and the sections of docs/http.md between GENERATED markers,
    from the settings, routes, Structs and problems in the code. Run it from a checkout after
    changing any of them; the suite (tests/test_docs.py) fails while they disagree."""
    http_page = DOCS / "http.md"
    pages = {
        DOCS / "configuration.md": configuration_markdown(),
        http_page: http.fill(http_page.read_text(), http.sections()),
    }
    stale = [page for page, text in pages.items() if not page.exists() or page.read_text() != text]
    if check:
        for page in stale:
            click.echo(f"{page.relative_to(DOCS.parent)} is out of date: run python -m service.reference", err=True)
        raise SystemExit(1 if stale else 0)
    for page in stale:
        page.write_text(pages[page])
        click.echo(f"wrote {page.relative_to(DOCS.parent)}")


if __name__ == "__main__":
    main()
