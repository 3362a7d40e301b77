"""Torch's thread count, changed in one place only.

`torch.set_num_threads` is process-wide. In a job or CLI process one computation runs at a time, so a block
may set it and restore it. In the Streamlit server many sessions run at once on threads of one process:
a block that changed it there could leave every other session at one thread, so there it never changes.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()


@contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """Run the block with `count` intra-op threads (None or 0: leave as is); never inside the app server."""
    from wbc_core import context

    if not count or (context.is_current() and context.current().process == "app"):
        yield
        return
    import torch

    with _lock:
        before = torch.get_num_threads()
        torch.set_num_threads(int(count))
    try:
        yield
    finally:
        with _lock:
            torch.set_num_threads(before)
