"""Peak memory (RSS) of one folder import into a throw-away home: `python bench/import_memory.py FOLDER`.

Each measurement runs in a fresh process, so the peak belongs to that import alone. `--big N` first writes a
folder of N valid 4090x4090 noise PNGs (about 50 MB each) to a temporary folder and imports that instead.
Prints one JSON object: images imported, seconds, peak RSS in MiB, and the machine's CPU count.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _write_big(folder: Path, n: int, side: int = 4090) -> Path:
    """n distinct noise PNGs of side x side in two classes; noise barely compresses, like the issue's files."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(n):
        target = folder / ("a" if i % 2 else "b")
        target.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(target / f"{i}.png",
                                                                                     compress_level=1)
    return folder


def _measure(folder: Path) -> dict[str, object]:
    """Import folder into a new home in this process; peak RSS of this process afterwards."""
    from wbc_core import context
    from wbc_core.data import SplitConfig
    from wbc_core.importing import import_folder

    with tempfile.TemporaryDirectory(prefix="wbc_mem_home_") as home:
        ctx = context.build("bench", home=home)
        with context.using(ctx):
            from wbc_core.auth import claim_local_account

            owner = claim_local_account("bench")  # the acting admin of the import
            before_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            started = time.monotonic()
            result = import_folder(folder, "memory", size=64, split=SplitConfig(seed=0), user=owner)
            seconds = time.monotonic() - started
        ctx.close()
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {"images": sum(sum(v.values()) for v in result.class_counts.values()), "seconds": round(seconds, 1),
            "peak_rss_mib": round(peak_kib / 1024),
            "rss_before_import_mib": round(before_kib / 1024), "cpus": os.cpu_count()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", type=Path, help="folder (or .zip) of class subfolders")
    parser.add_argument("--big", type=int, default=0, help="import N generated 4090x4090 PNGs instead")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_measure(args.folder)))
        return 0
    with tempfile.TemporaryDirectory(prefix="wbc_mem_src_") as tmp:
        folder = _write_big(Path(tmp) / "big", args.big) if args.big else args.folder
        if folder is None:
            parser.error("give a folder or --big N")
        out = subprocess.run([sys.executable, __file__, str(folder), "--child"], cwd=ROOT, check=True,
                             capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    print(out.stdout.strip().splitlines()[-1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
