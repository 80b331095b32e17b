"""trainbench pytest plugin (see issue: pytest-benchmark integration)."""
