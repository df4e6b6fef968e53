"""One run-directory writer for every stage.

A run writes into `<out>.partial-<pid>` and is renamed to `<out>` only when it succeeds, so an
existing run directory is never left half-overwritten. Layout:
  config.yaml  metrics.jsonl  summary.md  summary.json  plots/*.png  <checkpoints as HF folders>
and, when trackers are on (`rlhf.tracking`: TensorBoard by default), tensorboard/ (or wandb/) with the same metrics.
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import time
from collections import defaultdict
from dataclasses import is_dataclass
from pathlib import Path

import yaml

from rlhf import parallel
from rlhf.config import dump_yaml, to_dict
from rlhf.tracking import Trackers


class RunDir:
    """Under many processes (torchrun) every rank opens the same run: rank 0 writes its files and renames it,
    the others may write into `sub()` paths (sharded checkpoints) and skip the rest; the ranks meet after
    the folder is made and before and after it is renamed."""

    def __init__(self, out: str | Path, config=None):
        parallel.init()
        self.main = parallel.is_main()
        self.final = Path(out)
        self.path = self.final.with_name(f"{self.final.name}.partial-{parallel.broadcast_object(os.getpid())}")
        self.config = config
        self._metrics: dict[str, list[tuple[int, float]]] = defaultdict(list)
        self._metrics_file = None
        self.started = time.time()
        self._plotted = False
        self.trackers: Trackers | None = None

    def __enter__(self) -> "RunDir":
        if not self.main:
            parallel.barrier()  # rank 0 has made the folder
            return self
        if self.path.exists():
            shutil.rmtree(self.path)
        self.path.mkdir(parents=True)
        (self.path / "plots").mkdir()
        if self.config is not None:
            (self.path / "config.yaml").write_text(dump_yaml(self.config))
        self._metrics_file = open(self.path / "metrics.jsonl", "w")
        config = to_dict(self.config) if self.config is not None and is_dataclass(self.config) else None
        self.trackers = Trackers(self.path, self.final.name, config)
        parallel.barrier()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            parallel.barrier()  # every rank has written its part
        if not self.main:
            if exc_type is None:
                parallel.barrier()  # rank 0 has renamed the run into place
            return
        try:
            self._finish(exc_type)
        finally:
            if exc_type is None:
                parallel.barrier()

    def _finish(self, exc_type) -> None:
        self._metrics_file.close()
        self.trackers.finish()
        if exc_type is not None:
            shutil.rmtree(self.path, ignore_errors=True)
            return
        if not self._plotted:
            self.plot_metrics()
        self._point_configs_at_final_paths()
        old = None
        if self.final.exists():
            old = self.final.with_name(f"{self.final.name}.old-{os.getpid()}")
            self.final.rename(old)
        self.path.rename(self.final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def _point_configs_at_final_paths(self) -> None:
        """Every config.yaml in the run (the stages' too) names paths inside `<out>.partial-<pid>` while the run
        is written; before the rename they are made to name `<out>`, so each saved config re-runs as written."""
        for path in self.path.rglob("config.yaml"):
            data = yaml.safe_load(path.read_text())
            fixed = rebase_paths(data, str(self.path), str(self.final))
            if fixed != data:
                tmp = path.with_name(path.name + ".tmp")
                tmp.write_text(yaml.safe_dump(fixed, sort_keys=False))
                os.replace(tmp, path)

    def sub(self, name: str) -> Path:
        """A path inside the run (its final location is the same relative path under `out`)."""
        return self.path / name

    def log(self, step: int, **metrics: float) -> None:
        if not self.main:
            return
        row = {"step": step, **{k: _clean(v) for k, v in metrics.items()}}
        self._metrics_file.write(json.dumps(row) + "\n")
        self._metrics_file.flush()
        self.trackers.log(step, {k: v for k, v in row.items() if k != "step"})
        for key, value in row.items():
            if key != "step" and isinstance(value, (int, float)) and value is not None:
                self._metrics[key].append((step, float(value)))

    def plot_metrics(self, groups: dict[str, list[str]] | None = None) -> None:
        """One PNG per metric (or per group of metrics) from what was logged."""
        if not self.main or not self._metrics:
            return
        self._plotted = True
        from rlhf.plots import pyplot

        plt = pyplot()

        groups = groups or {k: [k] for k in self._metrics}
        for name, keys in groups.items():
            keys = [k for k in keys if k in self._metrics]
            if not keys:
                continue
            fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
            for key in keys:
                xs, ys = zip(*self._metrics[key])
                ax.plot(xs, ys, label=key, marker="." if len(xs) < 30 else None)
            ax.set_xlabel("step")
            ax.set_title(name)
            if len(keys) > 1:
                ax.legend(fontsize=7)
            ax.grid(alpha=0.3)
            fig.tight_layout()
            fig.savefig(self.path / "plots" / f"{_slug(name)}.png")
            plt.close(fig)

    def write_summary(self, title: str, sections: dict[str, object], data: dict | None = None) -> None:
        """summary.md for people (markdown tables from lists of dicts) and summary.json for programs."""
        if not self.main:
            return
        lines = [f"# {title}", "", f"wall time: {time.time() - self.started:.1f}s", ""]
        for heading, body in sections.items():
            lines += [f"## {heading}", ""]
            if isinstance(body, list) and body and isinstance(body[0], dict):
                lines += markdown_table(body)
            elif isinstance(body, dict):
                lines += [f"- {k}: {_fmt(v)}" for k, v in body.items()]
            else:
                lines.append(str(body))
            lines.append("")
        (self.path / "summary.md").write_text("\n".join(lines))
        payload = data if data is not None else sections
        (self.path / "summary.json").write_text(json.dumps(payload, indent=2, default=_clean))


def rebase_paths(value, root: str, to: str):
    """A config value with every path inside the run `root` (or its `root.partial-PID` while it was written)
    moved under `to`: "<root>/sft/model" -> "<to>/sft/model"."""
    if isinstance(value, dict):
        return {k: rebase_paths(v, root, to) for k, v in value.items()}
    if isinstance(value, list):
        return [rebase_paths(v, root, to) for v in value]
    if isinstance(value, str):
        m = re.match(re.escape(root) + r"(?:\.partial-\d+)?(?=/|$)", value)
        if m:
            return to + value[m.end():]
    return value


def markdown_table(rows: list[dict]) -> list[str]:
    cols = list(dict.fromkeys(k for r in rows for k in r))
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(_fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    return out


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e5 else f"{v:.3e}"
    return str(v)


def _clean(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if hasattr(v, "item"):
        return v.item()
    return v


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_").lower()
