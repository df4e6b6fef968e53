"""Reading run folders for the report: every folder the run writer leaves (config.yaml, metrics.jsonl, summary.json,
samples.jsonl, plots/*.png), found under the folder given, so a trainer's run, a pipeline with its stage folders and a
study with its seed folders all read the same way. Only reads; nothing here imports a trainer."""
from __future__ import annotations

import base64
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from rlhf.errors import RLHFError

MARKERS = ("config.yaml", "summary.json", "metrics.jsonl", "compare.json")
# folders that hold no runs of their own: models, checkpoints, plots, trackers' files, the world
SKIP = {"model", "checkpoints", "plots", "tensorboard", "wandb", "mlruns", "world", "__pycache__"}
MAX_DEPTH = 4


@dataclass
class Part:
    """One run folder inside what the user named: `name` is its path relative to that ('.' for itself)."""
    name: str
    config: str = ""  # config.yaml as written (the resolved config)
    config_data: dict = field(default_factory=dict)
    summary: dict | list | None = None
    metrics: dict[str, list[list]] = field(default_factory=dict)  # key -> [steps, values]
    samples: list[dict] = field(default_factory=list)
    plots: list[dict] = field(default_factory=list)  # {"name", "png": base64}


@dataclass
class Run:
    label: str
    path: str
    kind: str
    parts: list[Part]


def is_run_folder(path: Path) -> bool:
    return path.is_dir() and any((path / m).is_file() for m in MARKERS)


def load_run(path: str | Path, label: str | None = None) -> Run:
    root = Path(path)
    if not root.exists():
        raise RLHFError(f"{path}: no such folder")
    if not is_run_folder(root):
        raise RLHFError(f"{path}: not a run folder (none of {', '.join(MARKERS)} in it)")
    parts = [_read_part(root, d) for d in _run_folders(root, 0)]
    return Run(label or root.resolve().name, str(path), _kind(root, parts), parts)


def _run_folders(folder: Path, depth: int) -> list[Path]:
    found = [folder] if is_run_folder(folder) else []
    if depth < MAX_DEPTH:
        for d in sorted(p for p in folder.iterdir() if p.is_dir()):
            temporary = ".partial-" in d.name or ".old-" in d.name
            if d.name not in SKIP and not d.name.startswith(".") and not temporary:
                found += _run_folders(d, depth + 1)
    return found


def _kind(root: Path, parts: list[Part]) -> str:
    summary = parts[0].summary if parts and parts[0].name == "." else None
    if any(p.name.startswith("seed-") for p in parts):
        return "study (" + ("compare" if (root / "compare.json").exists() or _has_compare(parts) else "seeds") + ")"
    if isinstance(summary, dict) and "table" in summary and "stages" in summary:
        return "pipeline"
    if len(parts) > 1:
        return "runs"
    return "run"


def _has_compare(parts: list[Part]) -> bool:
    return any(isinstance(p.summary, dict) and "run" in p.summary and "greedy" in p.summary for p in parts)


def _read_part(root: Path, folder: Path) -> Part:
    name = str(folder.relative_to(root)) if folder != root else "."
    part = Part(name)
    cfg = folder / "config.yaml"
    if cfg.is_file():
        part.config = cfg.read_text()
        try:
            data = yaml.safe_load(part.config)
        except yaml.YAMLError as exc:
            raise RLHFError(f"{cfg}: invalid YAML ({getattr(exc, 'problem', exc)})") from None
        part.config_data = data if isinstance(data, dict) else {}
    for fname in ("summary.json", "compare.json"):
        if (folder / fname).is_file():
            part.summary = _read_json(folder / fname)
            break
    if (folder / "metrics.jsonl").is_file():
        part.metrics = _read_metrics(folder / "metrics.jsonl")
    if (folder / "samples.jsonl").is_file():
        part.samples = _read_jsonl(folder / "samples.jsonl")
    if not part.metrics and (folder / "plots").is_dir():  # plots drawn from summaries; metric plots become curves
        part.plots = [{"name": p.stem, "png": base64.b64encode(p.read_bytes()).decode()}
                      for p in sorted((folder / "plots").glob("*.png"))]
    return part


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise RLHFError(f"{path}: not JSON ({exc})") from None


def _read_jsonl(path: Path) -> list[dict]:
    rows, lines = [], path.read_text().splitlines()
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            if i == len(lines):  # a run killed mid-write leaves a partial last line
                break
            raise RLHFError(f"{path}:{i}: not JSON ({exc})") from None
        if isinstance(row, dict):
            rows.append(row)
    return rows


def _read_metrics(path: Path) -> dict[str, list[list]]:
    series: dict[str, list[list]] = {}
    for row in _read_jsonl(path):
        step = row.get("step")
        if not isinstance(step, (int, float)):
            continue
        for key, value in row.items():
            if key == "step" or isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value):
                continue
            xs, ys = series.setdefault(key, [[], []])
            xs.append(step)
            ys.append(float(f"{value:.6g}"))
    return series
