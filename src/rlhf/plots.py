"""Matplotlib for files only: the one place the headless backend is chosen."""
from __future__ import annotations


def pyplot():
    """matplotlib.pyplot on the Agg backend (imported on first use: the CLI starts faster without it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
