"""Grids of runs: scheduling, claims, executors, status, packing."""
