"""Where a run's metrics go besides metrics.jsonl: TensorBoard, Weights & Biases or MLflow, through accelerate's
tracker classes (`accelerate.tracking`). The run writer (`RunDir.log`) feeds them every row it writes, with the
same names and steps, so every stage of every command reports to them without code of its own.

The choice is a run option, the same for every run folder one command writes (a pipeline's stages included):
`tracking: [tensorboard, wandb]` at the top of any command's YAML config, or `--set tracking=wandb,mlflow`;
`tracking: []` turns them off. Left unset: TensorBoard event files in each run folder (`<run>/tensorboard/`) when
tensorboard is installed, nothing otherwise. Offline: wandb runs with WANDB_MODE=offline write into `<run>/wandb/`
(`wandb sync` uploads them later); MLflow writes where MLFLOW_TRACKING_URI points (a local folder by default).
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from rlhf.errors import RLHFError

# tracker name -> the package it needs
TRACKERS = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}

_chosen: list[str] | None = None  # None: the default


def installed(name: str) -> bool:
    return importlib.util.find_spec(TRACKERS[name]) is not None


def default() -> list[str]:
    return ["tensorboard"] if installed("tensorboard") else []


def parse(value) -> list[str]:
    """A config's `tracking` value (a list, a comma-separated string, or none) -> tracker names, checked."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "null", "off")):
        return []
    names = [v.strip() for v in value.split(",")] if isinstance(value, str) else value
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise RLHFError(f"tracking: expected a list of tracker names ({', '.join(TRACKERS)}), got {value!r}")
    for name in names:
        if name not in TRACKERS:
            raise RLHFError(f"tracking: unknown tracker '{name}'; trackers are {', '.join(TRACKERS)}")
        if not installed(name):
            raise RLHFError(f"tracking: {name} is not installed (pip install {TRACKERS[name]})")
    return list(dict.fromkeys(names))


def choose(value) -> None:
    """Set the trackers of the runs this process writes from now on (`None`: the default)."""
    global _chosen
    _chosen = None if value is None else parse(value)


def chosen() -> list[str]:
    return default() if _chosen is None else list(_chosen)


class Trackers:
    """The trackers of one run folder: started on the first row logged (a folder that logs nothing gets no
    event files), fed every row, finished before the run writer renames the folder."""

    def __init__(self, path: Path, name: str, config: dict | None):
        self.path, self.name, self.config = Path(path), name, config or {}
        self.names = chosen()
        self._live: list | None = None

    def _start(self) -> list:
        from accelerate import tracking

        live = []
        for name in self.names:
            if name == "tensorboard":
                t = tracking.TensorBoardTracker("tensorboard", self.path)
            elif name == "wandb":
                t = tracking.WandBTracker(os.environ.get("WANDB_PROJECT", "rlhf"), name=self.name, dir=str(self.path),
                                          config=self.config)
            else:
                t = tracking.MLflowTracker("rlhf", run_name=self.name, nested_run=True)
            t.start()
            if name == "mlflow":
                t.store_init_configuration(_flat(self.config))
            live.append(t)
        return live

    def log(self, step: int, row: dict) -> None:
        if not self.names:
            return
        if self._live is None:
            self._live = self._start()
        values = {k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        for t in self._live:
            t.log(values, step=step)

    def finish(self) -> None:
        for t in self._live or []:
            t.finish()
        self._live = None


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v if isinstance(v, (int, float, str, bool)) or v is None else str(v)
    return out
