"""`python -m wbc_core ...`: the headless interface (see wbc_core/cli/main.py)."""

import sys

from wbc_core.cli.main import main

sys.exit(main())
