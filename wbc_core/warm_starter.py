"""`python -m wbc_core.warm_starter`: the process that forks local job workers with torch already imported.

An entry module of its own, as wbc_core.worker: run as `-m wbc_core.jobs.warm`, the module would be imported twice
(wbc_core.jobs imports the launcher, which imports it)."""

import sys

from wbc_core.jobs.warm import serve

if __name__ == "__main__":
    sys.exit(serve())
