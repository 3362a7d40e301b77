"""Command-line interface (`python -m wbc_core ...` or `wbc ...`): main plus one module per area."""

from __future__ import annotations

import argparse


def add_compile_flag(parser: argparse.ArgumentParser, what: str) -> None:
    """--compile auto|on|off for a training command (the config's `compile` field); `what` names what compiles."""
    from wbc_core.compile import REQUESTS

    parser.add_argument("--compile", choices=REQUESTS, default=None,
                        help=f"torch.compile {what}: auto (default: where measured faster on this kind of device and "
                             "the planned steps win back the warm-up), on or off")
