"""`python -m wbc_core ...`: the headless interface (see wbc_core/cli.py)."""

import sys

from wbc_core.cli import main

sys.exit(main())
