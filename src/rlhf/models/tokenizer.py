"""A byte-level BPE tokenizer trained with `tokenizers` on the world's text, saved as a standard HF folder
with a chat template, EOS and PAD (distinct here; tokenizers whose pad is EOS work too: padding is told
apart by attention masks, never by the pad id)."""
from __future__ import annotations

from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from rlhf.data.chat import BUILTIN_TEMPLATE

EOS, PAD = "<|endoftext|>", "<pad>"

# The world's Human/Assistant chat template; `rlhf.data.chat` renders exactly this for the world's tokenizer.
CHAT_TEMPLATE = BUILTIN_TEMPLATE


def train_tokenizer(texts: Iterable[str], vocab_size: int = 2048) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS, PAD],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, pad_token=PAD)
    fast.chat_template = CHAT_TEMPLATE
    return fast
