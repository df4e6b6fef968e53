"""Create a from-scratch tiny GPT-2 causal LM folder to initialise a reward model from (no SFT stage).

    python bench/make_tiny_init.py runs/tiny-gpt2-hh --tokenizer .peers/tok
    python bench/make_tiny_init.py runs/tiny-gpt2-hh --train-tokenizer ../shared/data/hh-harmless/train.jsonl

Defaults match the TRL peer benchmark model: 4 layers, 256 wide, 4 heads, 512 positions, GPT-2 defaults
otherwise (dropout 0.1, inner width 4 x 256). The folder loads with AutoModelForCausalLM / AutoTokenizer and
is what `configs/reward_hh.yaml` points `init` at.
"""
from __future__ import annotations

import argparse
import json
import sys

import torch
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel


def hh_texts(path: str):
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                row = json.loads(line)
                yield row["chosen"]
                yield row["rejected"]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--tokenizer", help="an existing HF tokenizer folder (needs eos and pad tokens)")
    src.add_argument("--train-tokenizer", metavar="JSONL", help="train a byte-level BPE on an HH-style JSONL")
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--positions", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    if args.tokenizer:
        tok = AutoTokenizer.from_pretrained(args.tokenizer)
    else:
        from rlhf.models.tokenizer import train_tokenizer

        tok = train_tokenizer(hh_texts(args.train_tokenizer), vocab_size=args.vocab)
    if tok.pad_token_id is None or tok.eos_token_id is None or tok.pad_token_id == tok.eos_token_id:
        sys.exit("the tokenizer needs distinct eos and pad tokens")
    torch.manual_seed(args.seed)
    cfg = GPT2Config(vocab_size=len(tok), n_positions=args.positions, n_layer=args.layers, n_embd=args.width,
                     n_head=args.heads, bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id,
                     pad_token_id=tok.pad_token_id)
    model = GPT2LMHeadModel(cfg)
    model.save_pretrained(args.out)
    tok.save_pretrained(args.out)
    n = sum(p.numel() for p in model.parameters())
    print(f"wrote {args.out}: GPT-2 {args.layers}x{args.width}, vocab {len(tok)}, {n / 1e6:.1f}M parameters")


if __name__ == "__main__":
    main()
