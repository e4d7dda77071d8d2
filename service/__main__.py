"""``python -m service`` is ``orders-api`` (for environments where the console script is not on PATH)."""

from service.cli import main

main()
