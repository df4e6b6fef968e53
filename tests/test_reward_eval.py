"""`rlhf reward eval`: a hand-made reward model on a hand-made comparisons file (every format `rlhf reward`
reads), accuracy and its standard error checked by hand; plots, summary, table; bad input is one line."""
from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import AutoModelForSequenceClassification, LlamaConfig, AutoModelForCausalLM

from rlhf.data.chat import encode_prompt_response
from rlhf.models.reward import init_reward_model
from rlhf.models.tokenizer import train_tokenizer

TEXTS = ["Human: what is the capital of France?\n\nAssistant: Paris is the capital.",
         "Human: how do I bake bread?\n\nAssistant: Mix flour, water, yeast and salt, then bake it.",
         "Human: tell me a joke\n\nAssistant: Why did the chicken cross the road? To get to the other side."] * 3

# (prompt, response A, response B): each becomes one comparison; the last one a K = 3 ranking
ITEMS = [("what is the capital of France?", "Paris is the capital.", "bread"),
         ("how do I bake bread?", "Mix flour and water.", "the road"),
         ("tell me a joke", "Why did the chicken cross the road?", "no"),
         ("what is bread?", "flour, water, yeast and salt", "Paris")]
K3 = ("tell me about Paris", ["Paris is the capital of France.", "a joke", "bake it"])


@pytest.fixture(scope="module")
def rm_dir(tmp_path_factory):
    """A hand-made tiny reward model: a random 2-layer Llama with a scalar head, saved as `rlhf reward` saves."""
    tok = train_tokenizer(TEXTS, vocab_size=300)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128,
                      eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    base = tmp_path_factory.mktemp("base")
    AutoModelForCausalLM.from_config(cfg).save_pretrained(str(base))
    tok.save_pretrained(str(base))
    rm = init_reward_model(base, seed=0)
    torch.nn.init.normal_(rm.score.weight, std=3.0)  # spread the scores: no accidental ties
    rm.config.pad_token_id, rm.config.rlhf_reward_offset = tok.pad_token_id, 0.25
    out = tmp_path_factory.mktemp("rm")
    rm.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out, tok


def hf_score(folder, tok, prompt, response) -> float:
    """The score as HF's own sequence-classification forward gives it on one unpadded sequence."""
    model = AutoModelForSequenceClassification.from_pretrained(str(folder)).eval()
    ids = encode_prompt_response(tok, prompt, response, 128)
    with torch.no_grad():
        return float(model(input_ids=torch.tensor([ids])).logits[0, 0])


def write_file(path, folder, tok):
    """Label each comparison so that the RM's order is right on a known set of pairs: of the 4 two-way
    comparisons, 3 are labeled as the RM orders them; the K = 3 ranking is labeled best -> worst by the
    RM except that its top two are swapped (2 of its 3 pairs right). Returns (rows, pairs right, pairs)."""
    rows, right = [], 0
    for n, (prompt, a, b) in enumerate(ITEMS):
        sa, sb = hf_score(folder, tok, prompt, a), hf_score(folder, tok, prompt, b)
        hi, lo = (a, b) if sa > sb else (b, a)
        chosen, rejected = (hi, lo) if n < 3 else (lo, hi)
        right += n < 3
        if n == 0:  # TRL explicit prompt
            rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
        elif n == 1:  # Anthropic HH transcript
            rows.append({"chosen": f"\n\nHuman: {prompt}\n\nAssistant: {chosen}",
                         "rejected": f"\n\nHuman: {prompt}\n\nAssistant: {rejected}"})
        elif n == 2:  # TRL conversational
            rows.append({"prompt": [{"role": "user", "content": prompt}],
                         "chosen": [{"role": "assistant", "content": chosen}],
                         "rejected": [{"role": "assistant", "content": rejected}]})
        else:
            rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    prompt, responses = K3
    s = [hf_score(folder, tok, prompt, r) for r in responses]
    order = sorted(range(3), key=lambda i: -s[i])  # RM's best first
    ranks = [0, 0, 0]
    ranks[order[0]], ranks[order[1]], ranks[order[2]] = 2, 1, 3  # top two swapped: 2 of 3 pairs right
    rows.append({"prompt": prompt, "responses": responses, "ranks": ranks})
    right += 2
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows, right, 4 + 3, [hf_score(folder, tok, prompt, r) - 0.25 for r in responses]


def test_reward_eval_cli_on_a_hand_made_file(rm_dir, tmp_path, monkeypatch, capsys):
    from rlhf import cli

    folder, tok = rm_dir
    data = tmp_path / "pairs.jsonl"
    _, right, n, k3_scores = write_file(data, folder, tok)
    out = tmp_path / "ev"
    monkeypatch.setattr("sys.argv",
                        ["rlhf", "reward", "eval", "-m", str(folder), "--data", str(data), "--out", str(out),
                                     "--buckets", "2"])
    cli.main()
    summary = json.loads((out / "summary.json").read_text())
    res = summary["result"]
    acc = right / n  # 5 of 7 by construction
    assert (right, n) == (5, 7)
    assert res["pairs"] == 7 and res["rankings"] == 5
    assert res["pairwise_accuracy"] == pytest.approx(5 / 7)
    assert res["se"] == pytest.approx(math.sqrt(acc * (1 - acc) / 7))  # 0.1707...
    assert res["ci95"][0] == pytest.approx(acc - 1.96 * res["se"])
    by_length = summary["accuracy by response length"]
    assert sum(r["pairs"] for r in by_length) == 7 and len(by_length) == 2
    assert sum(r["accuracy"] * r["pairs"] for r in by_length) == pytest.approx(5)
    # the score distribution: 5 chosen (rank 1) and 2 + 4 rejected responses, normalized by the stored offset
    scores = {row["responses"]: row for row in summary["scores"]}
    assert scores["chosen"]["n"] == 5 and scores["rejected"]["n"] == 6
    # calibration rows cover both orders of every pair: 14 predictions
    assert sum(r["n"] for r in summary["calibration"]) == 14
    for name in ("scores", "calibration", "length"):
        assert (out / "plots" / f"{name}.png").stat().st_size > 1000
    md = (out / "summary.md").read_text()
    assert "pairwise_accuracy: 0.7143" in md and "accuracy by response length" in md
    printed = capsys.readouterr().out
    assert "0.7143" in printed and "0.1707" in printed


def test_reward_eval_scores_match_hf_forward(rm_dir, tmp_path):
    """The eval scores every response through the one scoring API; they equal HF's forward minus the offset."""
    from rlhf.data.comparisons import load_rankings
    from rlhf.eval.reward_eval import evaluate_comparisons
    from rlhf.models.reward import load_reward_model

    folder, tok = rm_dir
    data = tmp_path / "pairs.jsonl"
    _, _, _, k3_scores = write_file(data, folder, tok)
    rankings, _ = load_rankings(data)
    ev = evaluate_comparisons(load_reward_model(folder), tok, rankings[-1:], buckets=1)
    pooled = sorted(ev["_chosen"] + ev["_rejected"])
    assert pooled == pytest.approx(sorted(k3_scores), abs=1e-4)


def test_reward_eval_bad_input_is_one_line(rm_dir, tmp_path, monkeypatch, capsys):
    from rlhf import cli

    folder, _ = rm_dir
    data = tmp_path / "bad.jsonl"
    data.write_text(json.dumps({"prompt": "q", "chosen": "a", "rejected": "a"}) + "\n")
    for argv, message in ((["-m", str(tmp_path / "nope"), "--data", str(data)], "checkpoint not found"),
                          (["-m", str(folder), "--data", str(data)], "no usable comparisons"),
                          (["-m", str(folder), "--data", str(tmp_path / "missing.jsonl")], "missing.jsonl")):
        monkeypatch.setattr("sys.argv", ["rlhf", "reward", "eval", "--out", str(tmp_path / "ev"), *argv])
        with pytest.raises(SystemExit) as exit_:
            cli.main()
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and message in err and "Traceback" not in err
        assert len(err.strip().splitlines()) == 1
