"""What the side-by-side benchmarks share: checking the peer set-up and the environment both sides run in."""
from __future__ import annotations

import os
import sys
from pathlib import Path


def require_peers(*paths: str) -> None:
    for need in paths:
        if not Path(need).exists():
            sys.exit(f"missing {need}: build the peers with `bash ../shared/bench/peers/setup.sh .peers`")


def peer_env(threads: int, **extra: str) -> dict:
    """The same thread count for the peer and for us; no tokenizer threads, no HF progress bars."""
    return {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": str(threads),
            "MKL_NUM_THREADS": str(threads), "HF_HUB_DISABLE_PROGRESS_BARS": "1", **extra}
