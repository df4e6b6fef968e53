"""`rlhf report RUN_DIR...`: one self-contained HTML file for people to read a run, or to compare several.

It holds the resolved config, the summary tables, interactive metric curves (Plotly, its JavaScript bundle
embedded: no network, no external scripts or fonts), the samples per step with their reward-model score, gold
score and the step's KL, the over-optimization view (proxy and gold against sqrt(KL)) where a gold reward was
logged, and for several runs their configs side by side with the keys that differ marked. Any folder the run writer
leaves works: a trainer's run, a pipeline with its stage folders, a study with its seed folders; what a folder lacks
is left out of the report.

This package only reads run folders: the pipeline and the studies call `write_report` at their end, and no
trainer imports it.
"""
from __future__ import annotations

import json
import math
import re
import time
from dataclasses import asdict
from pathlib import Path

from rlhf.errors import RLHFError
from rlhf.report.load import Run, load_run

HERE = Path(__file__).parent


def write_report(paths: list[str | Path], out: str | Path | None = None) -> Path:
    """Read the run folders `paths` and write the report to `out` (default: `<run>/report.html` for one run,
    `report.html` for several); returns its path."""
    if not paths:
        raise RLHFError("report: name at least one run folder")
    runs = [load_run(p) for p in paths]
    _unique_labels(runs, [Path(p) for p in paths])
    out = Path(out) if out is not None else (Path(paths[0]) / "report.html" if len(paths) == 1 else Path("report.html"))
    if out.is_dir():
        raise RLHFError(f"-o {out}: is a folder; name the HTML file to write")
    html = build_html(runs)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(html, encoding="utf-8")
    tmp.replace(out)
    return out


def build_html(runs: list[Run]) -> str:
    from plotly.offline import get_plotlyjs  # the bundle, shipped inside the plotly package

    data = {"title": _title(runs), "generated": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "runs": [asdict(r) for r in runs], "config_diff": config_diff(runs)}
    for run in data["runs"]:
        for part in run["parts"]:
            part.pop("config_data")
    values = {"TITLE": _escape(data["title"]), "PLOTLY": get_plotlyjs().replace("</script", "<\\/script"),
              "DATA": _json_for_script(data), "SCRIPT": (HERE / "report.js").read_text(),
              "CSS": (HERE / "report.css").read_text()}
    template = (HERE / "template.html").read_text()
    return re.sub(r"\{\{(\w+)\}\}", lambda m: values[m.group(1)], template)


def config_diff(runs: list[Run]) -> list[dict]:
    """The flattened root configs side by side: [{"key", "values": [one per run], "differs"}]."""
    if len(runs) < 2:
        return []
    flats = [_flatten(_root_config(r)) for r in runs]
    keys = list(dict.fromkeys(k for f in flats for k in f))
    rows = []
    for key in keys:
        vals = [f.get(key, "(absent)") for f in flats]
        shown = [json.dumps(v) if not isinstance(v, str) else v for v in vals]
        rows.append({"key": key, "values": shown, "differs": len(set(shown)) > 1 and key != "out"})
    return rows


def _root_config(run: Run) -> dict:
    for part in run.parts:  # the folder itself, else its first part with a config
        if part.config_data:
            return part.config_data
    return {}


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _unique_labels(runs: list[Run], paths: list[Path]) -> None:
    """Folder names, with as many parent folders as it takes to tell the runs apart."""
    full = [p.resolve().parts for p in paths]
    for depth in range(1, max(len(f) for f in full) + 1):
        labels = ["/".join(f[-depth:]) for f in full]
        if len(set(labels)) == len(labels):
            break
    for run, label in zip(runs, labels):
        run.label = label


def _title(runs: list[Run]) -> str:
    if len(runs) == 1:
        return f"rlhf report: {runs[0].label} ({runs[0].kind})"
    return f"rlhf report: {len(runs)} runs compared"


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _json_for_script(data) -> str:
    """JSON inside <script type="application/json">: '</' and '<!--' could end or confuse the element."""
    text = json.dumps(_finite(data), ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def _finite(v):
    """NaN and infinities (JSON has neither) as null."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_finite(x) for x in v]
    return v
