"""Command-line interface (`python -m wbc_core ...` or `wbc ...`): main plus one module per area."""
