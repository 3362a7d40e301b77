"""`python -m wbc_core.worker RUN_ID`: the entry point of every job process (local or on a Ray cluster)."""

import sys

from wbc_core.jobs.worker import lower_priority, main

if __name__ == "__main__":
    # Here, in the job process's entry point, not in main(): tests and benches run main() in their own process,
    # which must keep its priority.
    lower_priority()
    sys.exit(main(int(sys.argv[1])))
