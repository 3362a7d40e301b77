"""Data intake: scan labelled sources, decode and validate images, split, demo data and BloodMNIST.

Everything here is a pure function over files and bytes: no database, no streamlit. Callers persist the results.
"""

from wbc_core.data.bloodmnist import BLOODMNIST_CLASSES, download_bloodmnist, read_bloodmnist_npz
from wbc_core.data.demo import DEMO_CLASSES, make_demo_cells, write_demo_folder
from wbc_core.data.ingest import (
    ImageStream,
    IngestConfig,
    IngestedImage,
    IngestError,
    IngestReport,
    SkippedFile,
    ingest,
    ingest_stream,
)
from wbc_core.data.split import SplitConfig, assign_splits, split_fingerprint

__all__ = [
    "BLOODMNIST_CLASSES",
    "DEMO_CLASSES",
    "ImageStream",
    "IngestConfig",
    "IngestError",
    "IngestReport",
    "IngestedImage",
    "SkippedFile",
    "SplitConfig",
    "assign_splits",
    "download_bloodmnist",
    "ingest",
    "ingest_stream",
    "make_demo_cells",
    "read_bloodmnist_npz",
    "split_fingerprint",
    "write_demo_folder",
]
