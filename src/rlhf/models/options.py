"""How a trainer loads and trains its model, the same keys in every trainer's config (`model.*`).

TRL users know these as ModelConfig (torch_dtype, use_peft, lora_r, lora_alpha, ...) and
TrainingArguments.gradient_checkpointing; here they are one nested dataclass:

    model:
      dtype: bf16                  # fp32 | bf16: the weights' dtype while training
      gradient_checkpointing: true # recompute activations in backward: less memory, about 30% more time
      lora:
        r: 16                      # 0: full fine-tuning; > 0: LoRA adapters through peft
        alpha: 32
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class LoraOptions:
    r: int = 0  # adapter rank; 0 trains every weight
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])  # peft names, or "all-linear"


@dataclass
class ModelOptions:
    dtype: str = "fp32"  # fp32 | bf16
    gradient_checkpointing: bool = False
    lora: LoraOptions = field(default_factory=LoraOptions)
