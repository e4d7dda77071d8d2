"""``python -m shared`` is ``orders-api`` (for environments where the console script is not on PATH)."""

from shared.cli import main

main()
