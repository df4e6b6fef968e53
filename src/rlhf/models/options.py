"""How a trainer loads and trains its model, the same keys in every trainer's config (`model.*`).

TRL users know these as ModelConfig (torch_dtype, use_peft, lora_r, lora_alpha, ...) and
TrainingArguments.gradient_checkpointing; here they are one nested dataclass:

    model:
      dtype: bf16                  # fp32 | bf16: the weights' dtype while training
      mixed_precision: bf16        # no | bf16: fp32 weights, matrix products in bf16 (autocast), TRL's bf16=True
      gradient_checkpointing: true # recompute activations in backward: less memory, about 30% more time
      lora:
        r: 16                      # 0: full fine-tuning; > 0: LoRA adapters through peft
        alpha: 32
"""
from __future__ import annotations

from dataclasses import dataclass, field

from rlhf.errors import RLHFError

DTYPES = ("fp32", "bf16")
MIXED_PRECISION = ("no", "bf16")


def check_mixed_precision(value: str) -> None:
    if value not in MIXED_PRECISION:
        raise RLHFError(f"model.mixed_precision: expected no or bf16, got '{value}'")


@dataclass
class LoraOptions:
    r: int = 0  # adapter rank; 0 trains every weight
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])  # peft names, or "all-linear"

    def __post_init__(self) -> None:
        if self.r < 0:
            raise RLHFError(f"model.lora.r: expected 0 (full fine-tuning) or a positive rank, got {self.r}")
        if self.r > 0 and self.alpha <= 0:
            raise RLHFError(f"model.lora.alpha: expected > 0, got {self.alpha}")
        if not 0 <= self.dropout < 1:
            raise RLHFError(f"model.lora.dropout: expected 0 <= dropout < 1, got {self.dropout}")
        if isinstance(self.target_modules, str):
            self.target_modules = [self.target_modules]
        if not self.target_modules:
            raise RLHFError("model.lora.target_modules: expected module names (e.g. q_proj, v_proj) or all-linear, got "
                            "[]")


@dataclass
class ModelOptions:
    dtype: str = "fp32"  # fp32 | bf16
    mixed_precision: str = "no"  # no | bf16: weights stay in `dtype`, forward/backward matmuls run in bf16 (autocast)
    gradient_checkpointing: bool = False
    lora: LoraOptions = field(default_factory=LoraOptions)

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise RLHFError(f"model.dtype: expected fp32 or bf16, got '{self.dtype}'")
        check_mixed_precision(self.mixed_precision)

    def torch_dtype(self):
        import torch

        self.__post_init__()  # the fields may have been set after construction
        return torch.float32 if self.dtype == "fp32" else torch.bfloat16
