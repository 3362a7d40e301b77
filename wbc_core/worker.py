"""`python -m wbc_core.worker RUN_ID`: the entry point of every job process (local or on a Ray cluster)."""

import sys

from wbc_core.jobs.worker import main

if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1])))
