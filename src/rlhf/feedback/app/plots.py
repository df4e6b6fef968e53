"""Small inline SVG bar charts for the dashboard: no plotting library, no external asset."""
from __future__ import annotations

from markupsafe import Markup, escape

WIDTH, BAR_H, GAP, LABEL_W = 460, 18, 6, 130


def hbar_chart(title: str, items: list[tuple[str, float | None]], vmax: float = 1.0, fmt: str = "{:.0%}") -> Markup:
    """Horizontal bars, one per (label, value); a missing value is drawn as 'n/a'."""
    height = 28 + len(items) * (BAR_H + GAP)
    scale = (WIDTH - LABEL_W - 60) / vmax if vmax else 0
    parts = [f'<svg class="chart" role="img" viewBox="0 0 {WIDTH} {height}" width="{WIDTH}" height="{height}">',
             f'<title>{escape(title)}</title>',
             f'<text x="0" y="16" class="chart-title">{escape(title)}</text>']
    for row, (label, value) in enumerate(items):
        y = 28 + row * (BAR_H + GAP)
        parts.append(f'<text x="{LABEL_W - 8}" y="{y + 13}" text-anchor="end">{escape(label)}</text>')
        if value is None:
            parts.append(f'<text x="{LABEL_W}" y="{y + 13}" class="muted">n/a</text>')
            continue
        w = max(0.0, value) * scale
        parts.append(f'<rect x="{LABEL_W}" y="{y}" width="{w:.1f}" height="{BAR_H}" rx="3"/>')
        parts.append(f'<text x="{LABEL_W + w + 6:.1f}" y="{y + 13}">{escape(fmt.format(value))}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


def histogram(title: str, labels: list[str], counts: list[int]) -> Markup:
    """Vertical bars, e.g. how often each Likert rating was given."""
    height, top, base = 190, 28, 160
    peak = max(counts) if counts and max(counts) > 0 else 1
    step = (WIDTH - 40) / max(1, len(counts))
    parts = [f'<svg class="chart" role="img" viewBox="0 0 {WIDTH} {height}" width="{WIDTH}" height="{height}">',
             f'<title>{escape(title)}</title>', f'<text x="0" y="16" class="chart-title">{escape(title)}</text>']
    for i, (label, count) in enumerate(zip(labels, counts)):
        h = (base - top - 14) * count / peak
        x = 20 + i * step
        parts.append(f'<rect x="{x + 4:.1f}" y="{base - h:.1f}" width="{step - 8:.1f}" height="{h:.1f}" rx="3"/>')
        parts.append(f'<text x="{x + step / 2:.1f}" y="{base - h - 4:.1f}" text-anchor="middle">{count}</text>')
        parts.append(f'<text x="{x + step / 2:.1f}" y="{base + 16}" text-anchor="middle">{escape(label)}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))
