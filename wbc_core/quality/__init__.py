"""Offline quality measures for generated cells: judge features, distances, memorisation, distribution metrics.

Kept import-light (no torch here): the Generate page reads metric names through wbc_core.quality_views.
"""

PREFIX = "quality/"  # metric names stored per GAN checkpoint: quality/<metric> and quality/<metric>/<class>
METRICS = ("fd_ratio", "fd", "fd_baseline", "density", "coverage", "precision", "recall", "memorised",
           "nearest_train", "copy_ct", "acceptance", "real_acceptance", "judge_accuracy", "tstr_accuracy", "n")
