"""The benchmark's scenarios: each a ``run(ctx)`` that returns its measurements."""
