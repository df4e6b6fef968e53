"""What the side-by-side benchmarks share: checking the peer set-up and the environment both sides run in."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def peer_arguments(ap: argparse.ArgumentParser, venv: str, peer: str) -> None:
    """The options every TRL side-by-side benchmark takes: the shared tokenizer, the peer's virtual environment
    (.peers/VENV) and script (../shared/bench/peers/PEER), the HH data, --skip-peer, and the hidden options of
    the subprocess that runs our side (--ours-only --work DIR)."""
    ap.add_argument("--tok", default=str(ROOT / ".peers" / "tok"))
    ap.add_argument("--python", default=str(ROOT / ".peers" / venv / "bin" / "python"), help="peer venv python")
    ap.add_argument("--peer", default=str(SHARED / "bench" / "peers" / peer))
    ap.add_argument("--data", default=str(SHARED / "data" / "hh-harmless" / "train.jsonl"))
    ap.add_argument("--skip-peer", action="store_true")
    ap.add_argument("--ours-only", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)


def require_peers(*paths: str) -> None:
    for need in paths:
        if not Path(need).exists():
            sys.exit(f"missing {need}: build the peers with `bash ../shared/bench/peers/setup.sh .peers`")


def peer_env(threads: int, **extra: str) -> dict:
    """The same thread count for the peer and for us; no tokenizer threads, no HF progress bars."""
    return {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": str(threads),
            "MKL_NUM_THREADS": str(threads), "HF_HUB_DISABLE_PROGRESS_BARS": "1", **extra}
