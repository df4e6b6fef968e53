"""Matplotlib for files only: the one place the headless backend is chosen."""
from __future__ import annotations


def pyplot():
    """matplotlib.pyplot on the Agg backend (imported on first use: the CLI starts faster without it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(path, curves: list[tuple[list, list, str]], hlines: list[tuple[float, str, str, str]],
                xlabel: str, ylabel: str, title: str) -> None:
    """One line per (xs, ys, label), reference lines (y, colour, style, label), written to `path`."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for xs, ys, label in curves:
        ax.plot(xs, ys, marker=".", label=label)
    for y, color, style, label in hlines:
        ax.axhline(y, color=color, ls=style, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
