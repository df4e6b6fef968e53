"""Checkpoints a trainer continues from exactly: models, optimizer and scheduler states, every RNG, the
data position and the trainer's scalars.

A checkpoint folder holds one subfolder per model (a Hugging Face folder, `model.safetensors` for a
plain module such as a value head, or a peft adapter folder for a model trained with LoRA, whose frozen
base is the run's starting checkpoint), `trainer_state.pt` (optimizers, schedulers, data streams, RNGs)
and `state.json` (the step and the trainer's scalars, readable by people), written last.

Under many processes (torchrun) the weights and optimizer states are sharded instead (`rlhf.parallel.checkpoint`,
torch.distributed.checkpoint): `dcp/` holds every rank's shards, each model's subfolder its config and the
tokenizer, `trainer_state.pt` the rest (rank 0's random states). Either kind resumes on any number of
processes: one process reads `dcp/` without a process group; many processes read a one-process checkpoint's
full tensors (each rank keeping its slice under FSDP2).
"""
from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from transformers import PreTrainedModel

from rlhf import parallel
from rlhf.errors import RLHFError
from rlhf.models import lora
from rlhf.parallel import checkpoint as sharded
from rlhf.parallel.fsdp import reshard


def _unwrap(model):
    return getattr(model, "module", model)


@dataclass
class TrainerState:
    """What a trainer saves and restores. `models`: name -> module; `stateful`: name -> anything with
    state_dict()/load_state_dict() (optimizers, schedulers, index streams); `generators`: the trainer's
    own torch generators. The tokenizer is saved beside every Hugging Face model."""
    models: dict[str, Any]
    stateful: dict[str, Any] = field(default_factory=dict)
    generators: dict[str, torch.Generator] = field(default_factory=dict)
    tokenizer: Any = None

    def _optimizers(self) -> dict[str, tuple[Any, Any]]:
        """stateful name -> (the model it steps, the optimizer), for every optimizer in `stateful` that steps one
        of `models` (the others are saved whole, as any stateful object)."""
        out = {}
        for m in self.models.values():
            reshard(m)  # FSDP2: the parameters the optimizer holds are the shards
        for key, obj in self.stateful.items():
            if isinstance(obj, torch.optim.Optimizer):  # accelerate's AcceleratedOptimizer too
                first = obj.param_groups[0]["params"][0]
                owner = [m for m in self.models.values() if any(p is first for p in m.parameters())]
                if owner:
                    out[key] = (owner[0], obj)
        return out

    def save(self, path: Path, step: int, **scalars) -> None:
        if parallel.world_size() > 1:
            self._save_sharded(path, step, scalars)
            return
        path.mkdir(parents=True, exist_ok=True)
        for name, model in self.models.items():
            model = _unwrap(model)
            if lora.has_adapters(model):  # the adapter only: the frozen base is the run's starting checkpoint
                lora.save_adapter(model, path / name, self.tokenizer)
            elif isinstance(model, PreTrainedModel):
                model.save_pretrained(str(path / name), safe_serialization=True)
                if self.tokenizer is not None:
                    self.tokenizer.save_pretrained(str(path / name))
            else:
                (path / name).mkdir(exist_ok=True)
                save_file(model.state_dict(), str(path / name / "model.safetensors"))
        self._save_rest(path, self.stateful, step, scalars)

    def _save_rest(self, path: Path, stateful: dict, step: int, scalars: dict) -> None:
        torch.save({"stateful": {k: v.state_dict() for k, v in stateful.items()},
                    "generators": {k: g.get_state() for k, g in self.generators.items()},
                    "python_rng": random.getstate(), "numpy_rng": np.random.get_state(),
                    "torch_rng": torch.get_rng_state()}, path / "trainer_state.pt")
        # written last and renamed into place: a checkpoint with a state.json is complete, even when the run
        # is killed while saving
        (path / "state.json.partial").write_text(json.dumps({"step": step, **scalars}))
        os.replace(path / "state.json.partial", path / "state.json")

    def _save_sharded(self, path: Path, step: int, scalars: dict) -> None:
        """Every rank writes its shards to dcp/; rank 0 then the configs, tokenizer and the rest."""
        optimizers = self._optimizers()
        if parallel.is_main():
            path.mkdir(parents=True, exist_ok=True)
        parallel.barrier()
        sharded.save(path, self.models, optimizers)
        if parallel.is_main():
            for name, model in self.models.items():
                model = _unwrap(model)
                if isinstance(model, PreTrainedModel):
                    model.config.save_pretrained(str(path / name))
                    if self.tokenizer is not None:
                        self.tokenizer.save_pretrained(str(path / name))
            self._save_rest(path, {k: v for k, v in self.stateful.items() if k not in optimizers}, step, scalars)
        parallel.barrier()

    def load(self, path: str | Path, trainer: str, mismatch_hint: str = "") -> dict:
        """Restore everything from `path`; returns state.json (step and scalars)."""
        path = checkpoint_dir(path, trainer)
        optimizers = self._optimizers()
        if sharded.is_sharded_checkpoint(path):
            sharded.load(path, self.models, optimizers)
        else:
            for name, model in self.models.items():
                if lora.has_adapters(model):
                    lora.load_adapter(_unwrap(model), path / name, name, mismatch_hint)
                else:
                    _load_weights(model, path / name, name, mismatch_hint)
        blob = torch.load(path / "trainer_state.pt", weights_only=False)
        for k, obj in self.stateful.items():
            if k in optimizers and k not in blob["stateful"]:
                continue  # in dcp/, loaded above
            if k in optimizers:
                sharded.load_full_optimizer(optimizers[k][0], obj, blob["stateful"][k])
            else:
                obj.load_state_dict(blob["stateful"][k])
        for k, g in self.generators.items():
            if k in blob["generators"]:  # e.g. a PPO-ptx run resumed from a plain PPO checkpoint
                g.set_state(blob["generators"][k])
        random.setstate(blob["python_rng"])
        np.random.set_state(blob["numpy_rng"])
        torch.set_rng_state(blob["torch_rng"])
        return json.loads((path / "state.json").read_text())


def checkpoint_dir(path: str | Path, trainer: str) -> Path:
    path = Path(path)
    if not (path / "state.json").is_file():
        raise RLHFError(f"resume: {path} is not a {trainer} checkpoint (no state.json)")
    return path


def _load_weights(model, folder: Path, name: str, hint: str) -> None:
    if not (folder / "model.safetensors").is_file():
        kind = "a LoRA adapter" if (folder / "adapter_model.safetensors").is_file() else "no model.safetensors"
        raise RLHFError(f"resume: {folder} holds {kind}, and this run trains its {name} model in full; "
                        "resume with the options (model.lora) of the run that saved it")
    weights = load_file(str(folder / "model.safetensors"))
    plain = _unwrap(model)
    tied = isinstance(plain, PreTrainedModel) and plain.config.tie_word_embeddings
    if tied:  # tied output weights are saved once
        weights = {k: v for k, v in weights.items() if k != "lm_head.weight"}
    expected = set(plain.state_dict()) - ({"lm_head.weight"} if tied else set())
    if set(weights) != expected:
        missing, unexpected = sorted(expected - set(weights)), sorted(set(weights) - expected)
        raise RLHFError(f"resume: {folder} does not match this run's {name} model{f' ({hint})' if hint else ''} "
                        f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    sharded.load_full_weights(model, weights)


def resume(state: TrainerState, path: str | Path | None, trainer: str, steps: int,
           mismatch_hint: str = "") -> tuple[int, dict]:
    """(step to start from, the checkpoint's scalars): (0, {}) without a checkpoint to resume from."""
    if not path:
        return 0, {}
    scalars = state.load(path, trainer, mismatch_hint)
    start = int(scalars["step"])
    if start >= steps:
        raise RLHFError(f"resume: {path} is at step {start}, and this run has steps={steps}: nothing to do")
    return start, scalars
