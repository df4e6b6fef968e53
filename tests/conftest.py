"""Shared fixtures: a tiny world, a tokenizer trained on it, a nano checkpoint, and a CLI runner.

Everything here is session-scoped and built in a few seconds, so any test module may use it.
Fixtures return paths or read-only objects; tests must not modify them (copy first).
"""
from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

# A world small enough that every stage runs in seconds. The same values as `--set` overrides:
TINY_WORLD = dict(n_people=12, n_places=6, n_things=6, n_unknown=12, corpus_repeats=2,
                  n_demonstrations=64, n_train_prompts=100, n_eval_prompts=10)
# for stage configs, whose world section is `world.*` ...
TINY_WORLD_SETS = [x for k, v in TINY_WORLD.items() for x in ("--set", f"world.{k}={v}")]
# ... and for `rlhf world` / `rlhf eval`, whose config is the WorldConfig itself
TINY_WORLD_TOP_SETS = [x for k, v in TINY_WORLD.items() for x in ("--set", f"{k}={v}")]
# a pretraining run that takes a few steps of a nano model
TINY_PRETRAIN_SETS = ["--set", "steps=3", "--set", "batch_size=4", "--set", "seq_len=32", "--set", "vocab_size=384",
                      "--set", "model.size=nano", "--set", "model.max_len=64", "--set", "eval_every=3"]


@pytest.fixture(scope="session")
def tiny_world_config():
    from rlhf.world import WorldConfig

    return WorldConfig(**TINY_WORLD)


@pytest.fixture(scope="session")
def tiny_world(tiny_world_config):
    from rlhf.world import World

    return World(tiny_world_config)


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_world):
    """A byte-level BPE tokenizer with the chat template, trained on the tiny world's text."""
    from rlhf.models.tokenizer import train_tokenizer

    texts = tiny_world.corpus() + [m["content"] for d in tiny_world.demonstrations() for m in d["messages"]]
    return train_tokenizer(texts, vocab_size=384)


@pytest.fixture(scope="session")
def nano_checkpoint(tmp_path_factory, tiny_tokenizer) -> Path:
    """An untrained nano llama saved as a Hugging Face folder (model + tokenizer). Read-only."""
    from rlhf.models.lm import create_model, save_model

    path = tmp_path_factory.mktemp("nano") / "model"
    save_model(create_model("nano", tiny_tokenizer, max_len=64, seed=0), tiny_tokenizer, path)
    return path


@pytest.fixture(scope="session")
def nano_rm_checkpoint(tmp_path_factory, nano_checkpoint, tiny_tokenizer) -> Path:
    """An untrained reward model on the nano checkpoint (score head seed 0), as a Hugging Face folder. Read-only."""
    from rlhf.models.reward import init_reward_model

    path = tmp_path_factory.mktemp("rm") / "model"
    model = init_reward_model(nano_checkpoint, seed=0)
    model.config.pad_token_id = tiny_tokenizer.pad_token_id
    model.save_pretrained(str(path))
    tiny_tokenizer.save_pretrained(str(path))
    return path


@pytest.fixture(scope="session")
def write_prompts():
    """write_prompts(path, n): n world-style prompts as a JSONL file of {"prompt": ...} rows; returns the path."""
    import json

    def write(path: Path, n: int) -> Path:
        path.write_text("".join(json.dumps({"prompt": f"Where does person {i} live?"}) + "\n" for i in range(n)))
        return path

    return write


def _cli_env() -> dict:
    env = dict(os.environ)
    # one thread per process: the CLI tests run several processes at once on few cores
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    env.pop("HF_HUB_DISABLE_PROGRESS_BARS", None)  # the CLI itself must keep stderr clean
    return env


class CLI:
    """Runs the real `rlhf` entry point in a subprocess: `run` waits, `start` returns a future
    (up to `workers` run at once) whose `.result()` is the CompletedProcess."""

    def __init__(self, workers: int = 4, timeout: float = 300):
        self.timeout = timeout
        self._pool = ThreadPoolExecutor(max_workers=workers)

    def _call(self, args, cwd) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-c", "from rlhf.cli import main; main()", *map(str, args)]
        return subprocess.run(cmd, cwd=cwd, env=_cli_env(), capture_output=True, text=True, timeout=self.timeout)

    def start(self, *args, cwd: str | Path | None = None):
        return self._pool.submit(self._call, args, cwd)

    def run(self, *args, cwd: str | Path | None = None) -> subprocess.CompletedProcess:
        return self._call(args, cwd)

    def close(self) -> None:
        self._pool.shutdown(wait=True)


@pytest.fixture(scope="session")
def cli():
    runner = CLI()
    yield runner
    runner.close()


@pytest.fixture(scope="session")
def tiny_world_sets() -> list[str]:
    """`--set world.k=v ...` arguments that make a stage use the tiny world."""
    return list(TINY_WORLD_SETS)


@pytest.fixture(scope="session")
def tiny_world_top_sets() -> list[str]:
    """`--set k=v ...` arguments for commands whose config is the WorldConfig (`rlhf world`, `rlhf eval`)."""
    return list(TINY_WORLD_TOP_SETS)


@pytest.fixture(scope="session")
def tiny_pretrain_sets(tiny_world_sets) -> list[str]:
    """`--set` arguments for a 3-step nano pretraining run on the tiny world."""
    return tiny_world_sets + TINY_PRETRAIN_SETS


# Debian's chromium, driven by Playwright: the labeling app's and the report's browser tests
CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture
def browser():
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not installed (scripts/setup.sh test installs Debian's chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield browser
        browser.close()
