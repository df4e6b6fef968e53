"""Matplotlib for files only (the one place the headless backend is chosen), and the plots that more than one
command draws: metric curves, a reward model's calibration."""
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


def calibration_rows(calib: list[tuple[float, int]], bins: int = 10) -> list[dict]:
    """Predicted P(chosen) binned: per bin the mean prediction, the observed frequency and the count."""
    rows = []
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        sel = [(p, y) for p, y in calib if lo <= p < hi or (b == bins - 1 and p == 1.0)]
        if sel:
            rows.append({"bin": f"{lo:.1f}-{hi:.1f}", "predicted": sum(p for p, _ in sel) / len(sel),
                         "observed": sum(y for _, y in sel) / len(sel), "n": len(sel)})
    return rows


def plot_calibration(calib: list[tuple[float, int]], path, bins: int = 10) -> list[dict]:
    plt = pyplot()
    rows = calibration_rows(calib, bins)
    fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
    ax.plot([0, 1], [0, 1], "k--", lw=0.7)
    ax.plot([r["predicted"] for r in rows], [r["observed"] for r in rows], "o-")
    ax.set_xlabel("predicted P(chosen) = sigmoid(margin)")
    ax.set_ylabel("observed frequency")
    ax.set_title("reward model calibration")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return rows
