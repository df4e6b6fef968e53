"""Real tasks as presets of `rlhf pipeline --preset NAME`: a pretrained local HF model, real prompts and a
programmatic gold scorer (or real human comparisons), each run ending in a summary table.

  sentiment     continue a Shakespeare prefix positively; gold: VADER compound (`tasks/sentiment.py`)
  instructions  IFBench's verifiable instructions; gold: the share of instructions followed (`tasks/instructions.py`)
  hh-harmless   a reward model on HH-RLHF harmless comparisons, then best-of-N with it (`tasks/hh.py`)
"""
from __future__ import annotations

# name -> (module, config class); `tasks/presets.py` loads and runs them
PRESETS = {
    "sentiment": ("rlhf.tasks.sentiment", "SentimentConfig"),
    "instructions": ("rlhf.tasks.instructions", "InstructionsConfig"),
    "hh-harmless": ("rlhf.tasks.hh", "HHConfig"),
}
