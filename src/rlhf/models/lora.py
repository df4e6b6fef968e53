"""How every trainer gets the model(s) it trains from a folder and `model:` options (`ModelOptions`): the
weights' dtype, gradient checkpointing, and LoRA adapters through peft.

- `trainable(model, opts)`: the model a trainer trains. LoRA r = 0 leaves it as loaded (full fine-tuning);
  r > 0 injects adapters with `peft.get_peft_model` (task CAUSAL_LM for policies, SEQ_CLS for reward and
  value models, whose score head is then trained and saved as a peft `modules_to_save` copy). The trainer
  keeps working on the Hugging Face model itself, now holding the adapters, so every forward helper of the
  project (`backbone`, packed log-probs, the score head) works unchanged.
- `reference(policy, ...)`: the frozen reference. When the policy has adapters and the reference is its own
  starting checkpoint, it is `AdapterDisabled(policy)`: the same weights run under
  `peft_model.disable_adapter()`, with no second copy in memory.
- `save_final(model, tokenizer, folder)`: a plain HF folder every later stage loads as usual. With LoRA the
  adapter alone goes to `adapter/` beside it, then the adapters are merged (`merge_and_unload`) and the merged
  model is saved with safetensors and the tokenizer. The trainer's model is a plain model afterwards.
- `save_adapter` / `load_adapter`: what resumable checkpoints keep of a LoRA model (the adapter; the frozen
  base is the starting checkpoint, loaded again on resume).
"""
from __future__ import annotations

import functools
import types
import warnings
from pathlib import Path

import torch

from rlhf.errors import RLHFError
from rlhf.models.lm import save_model
from rlhf.models.options import ModelOptions

_HANDLE = "_rlhf_peft_model"  # the PeftModel around a model with adapters (kept out of the module tree)


def _unwrap(model):
    return getattr(model, "module", model)


def peft_model(model):
    """The peft wrapper of a model that holds LoRA adapters, or None."""
    return _unwrap(model).__dict__.get(_HANDLE)


def has_adapters(model) -> bool:
    return peft_model(model) is not None


# ---------------------------------------------------------------- loading


def trainable(model, opts: ModelOptions, seed: int = 0, task: str = "CAUSAL_LM"):
    """`model` (as loaded, fp32) ready to train under `opts`: cast to opts.dtype, LoRA adapters when
    opts.lora.r > 0 (`task`: CAUSAL_LM or SEQ_CLS; initialized from `seed`, the global RNG untouched),
    gradient checkpointing when asked. The defaults change nothing."""
    dtype = opts.torch_dtype()
    if dtype != torch.float32:
        model = model.to(dtype)
    if opts.lora.r > 0:
        from peft import LoraConfig, TaskType, get_peft_model

        targets = opts.lora.target_modules
        cfg = LoraConfig(r=opts.lora.r, lora_alpha=opts.lora.alpha, lora_dropout=opts.lora.dropout,
                         target_modules="all-linear" if list(targets) == ["all-linear"] else list(targets),
                         task_type=getattr(TaskType, task))
        try:
            with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
                torch.manual_seed(seed)
                warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
                # adapters in fp32 whatever the base dtype (autocast_adapter_dtype)
                wrapper = get_peft_model(model, cfg)
        except ValueError as exc:
            raise RLHFError(f"model.lora.target_modules: {str(exc).splitlines()[0]}") from None
        object.__setattr__(model, _HANDLE, wrapper)  # not a submodule: the wrapper contains the model
    if opts.gradient_checkpointing:
        # transformers >= 5.x names it activation checkpointing (the old name warns)
        enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
        try:
            enable({"use_reentrant": False})
        except ValueError as exc:
            raise RLHFError(f"model.gradient_checkpointing: {str(exc).splitlines()[0]}") from None
        if opts.lora.r > 0:
            model.enable_input_require_grads()  # frozen embeddings: checkpointed layers still get inputs with grad
        _checkpoint_in_eval_mode(model)
    return model


def frozen(model, opts: ModelOptions):
    """A model that is only run, never trained (reference, reward model): opts.dtype, no gradients, eval mode."""
    dtype = opts.torch_dtype()
    if dtype != torch.float32:
        model = model.to(dtype)
    model.requires_grad_(False)
    model.eval()
    return model


def reference(policy, policy_path: str | Path, ref_path: str | Path, opts: ModelOptions, loader):
    """The frozen reference of `policy`: the policy itself with its adapters disabled when it has LoRA
    adapters and `ref_path` is its starting checkpoint; otherwise `loader(ref_path)`, frozen."""
    if has_adapters(policy) and Path(ref_path).resolve() == Path(policy_path).resolve():
        return AdapterDisabled(policy)
    return frozen(loader(ref_path), opts)


class _Off:
    """Calls `fn` with the adapters of `wrapper` disabled."""

    def __init__(self, wrapper, fn):
        self.wrapper, self.fn = wrapper, fn

    def __call__(self, *args, **kwargs):
        with self.wrapper.disable_adapter():
            return self.fn(*args, **kwargs)


class AdapterDisabled(torch.nn.Module):
    """The base model under a LoRA policy, as a frozen reference: every forward (the full model, its
    transformer `base_model`, its output embeddings) runs under `disable_adapter()` of the policy's peft
    wrapper. It owns no parameters: `parameters()` lists the policy's (for their device), and
    `requires_grad_` / `to` leave them alone."""

    def __init__(self, policy):
        super().__init__()
        policy = _unwrap(policy)
        object.__setattr__(self, "_policy", policy)  # not a submodule: nothing is registered twice
        self.config = policy.config
        # the policy's forward signature (`logits_to_keep`, ...), so callers pass the same arguments
        self.forward = functools.wraps(policy.forward)(_Off(peft_model(policy), policy))
        self.eval()

    @property
    def base_model(self):
        return _Off(peft_model(self._policy), self._policy.base_model)

    def get_output_embeddings(self):
        return _Off(peft_model(self._policy), self._policy.get_output_embeddings())

    def parameters(self, recurse: bool = True):
        return self._policy.parameters(recurse)

    def requires_grad_(self, requires_grad: bool = True):
        return self  # a view of the policy's weights: freezing it must not freeze the policy

    def train(self, mode: bool = True):
        self.training = False  # always the reference: no dropout
        return self


# ---------------------------------------------------------------- gradient checkpointing in eval mode


def _checkpoint_in_eval_mode(model) -> None:
    """Hugging Face checkpoints a layer only while the layer is in training mode, and the RL trainers keep
    their models in eval mode (no dropout). The checkpointed layers therefore stay in training mode whatever
    model.train()/eval() says; everything inside them (dropout) still follows it. Without gradients (sampling,
    reference passes) layers run as usual, KV cache included."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    for module in model.modules():
        if isinstance(module, GradientCheckpointingLayer) and module.gradient_checkpointing:
            module.train = types.MethodType(_train_keeping_checkpointing, module)
            module.train(model.training)


def _train_keeping_checkpointing(self, mode: bool = True):
    torch.nn.Module.train(self, mode)
    self.training = True
    return self


# ---------------------------------------------------------------- saving


def save_final(model, tokenizer, directory: str | Path) -> None:
    """A trainer's final model as a plain HF folder (safetensors + tokenizer). With LoRA: the adapter alone
    to `adapter/` beside `directory`, then the adapters merged into the weights (in place) and saved."""
    model = _unwrap(model)
    wrapper = peft_model(model)
    if wrapper is None:
        save_model(model, tokenizer, directory)
        return
    directory = Path(directory)
    save_adapter(model, directory.parent / "adapter", tokenizer)
    merged = wrapper.merge_and_unload()
    del merged.__dict__[_HANDLE]
    merged.__dict__.pop("peft_config", None)
    save_model(merged, tokenizer, directory)


def save_adapter(model, directory: str | Path, tokenizer=None) -> None:
    """The adapter weights (and a trained score head) with their adapter_config.json: loadable with
    `peft.PeftModel.from_pretrained(base, directory)`."""
    peft_model(model).save_pretrained(str(directory), safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(directory))


def load_adapter(model, directory: Path, name: str, hint: str = "") -> None:
    """Restore adapter weights saved by `save_adapter` into `model` (same adapter shapes and targets)."""
    from peft import get_peft_model_state_dict, set_peft_model_state_dict
    from safetensors.torch import load_file

    file = directory / "adapter_model.safetensors"
    if not file.is_file():
        raise RLHFError(f"resume: {directory} holds no LoRA adapter, and this run's {name} model trains one "
                        "(model.lora.r > 0); resume with the options of the run that saved it")
    wrapper = peft_model(model)
    weights = load_file(str(file))
    expected = set(get_peft_model_state_dict(wrapper))
    if set(weights) != expected:
        missing, unexpected = sorted(expected - set(weights)), sorted(set(weights) - expected)
        raise RLHFError(f"resume: {file} does not match this run's {name} adapter{f' ({hint})' if hint else ''} "
                        f"(missing {missing[:3]}, unexpected {unexpected[:3]}); same model.lora options?")
    set_peft_model_state_dict(wrapper, weights)
