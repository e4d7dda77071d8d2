"""``python -m service.reference``: rewrite docs/configuration.md and the generated sections of docs/http.md."""

from __future__ import annotations

from pathlib import Path

from service.reference import http
from service.reference.configuration import configuration_markdown

DOCS = Path(__file__).resolve().parents[2] / "docs"


def main() -> None:
    (DOCS / "configuration.md").write_text(configuration_markdown())
    page = DOCS / "http.md"
    page.write_text(http.fill(page.read_text(), http.sections()))


if __name__ == "__main__":
    main()
