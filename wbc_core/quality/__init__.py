"""Offline quality measures for generated cells: features, distances, memorisation, distribution metrics."""
