"""Offline training for facegen: data, one loop per family, evaluation, plots. ``python -m training --help``."""
