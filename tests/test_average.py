"""Weight averaging (`rlhf models average`, the pipeline's averaged policy): the arithmetic and the bad input."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from rlhf.errors import RLHFError
from rlhf.models.average import average_state


def test_average_state_is_the_convex_combination_by_hand():
    a = {"w": torch.tensor([1.0, 2.0, 4.0]), "steps": torch.tensor([7])}
    b = {"w": torch.tensor([3.0, 2.0, 0.0]), "steps": torch.tensor([9])}
    out = average_state(a, b, 0.25)
    assert torch.allclose(out["w"], torch.tensor([1.5, 2.0, 3.0]))  # 0.75 * a + 0.25 * b
    assert out["steps"].item() == 7  # integer buffers: the fine-tuned model's
    assert torch.equal(average_state(a, b, 0.0)["w"], a["w"]) and torch.equal(average_state(a, b, 1.0)["w"], b["w"])


@pytest.mark.parametrize("b, message", [
    ({"w": torch.zeros(2)}, "parameter 'w': shape (3,) in fine-tuned but (2,) in base"),
    ({"w": torch.zeros(3), "extra": torch.zeros(1)}, "base: parameter 'extra' is not in the other model"),
])
def test_average_state_rejects_other_architectures(b, message):
    with pytest.raises(RLHFError, match=message.replace("(", r"\(").replace(")", r"\)")):
        average_state({"w": torch.zeros(3)}, b, 0.5)


def test_cli_average_writes_the_average_and_rejects_bad_input(cli, nano_checkpoint, tiny_world, tmp_path):
    """Two folders of one architecture (the tiny model and a perturbed copy) -> their average; a weight
    outside [0, 1], a non-empty output and another vocabulary -> one clear line, nothing written."""
    from rlhf.models.lm import load_causal_lm, load_tokenizer, save_model

    other = tmp_path / "other"
    model = load_causal_lm(nano_checkpoint)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    save_model(model, load_tokenizer(nano_checkpoint), other)
    res = cli.run("models", "average", other, nano_checkpoint, tmp_path / "avg", "--weight", "0.25")
    assert res.returncode == 0, res.stderr[-2000:]
    a, b, avg = (load_file(d / "model.safetensors") for d in (other, nano_checkpoint, tmp_path / "avg"))
    for k in avg:
        assert torch.allclose(avg[k], 0.75 * a[k] + 0.25 * b[k], atol=1e-6), k
    assert (tmp_path / "avg" / "tokenizer_config.json").exists()

    res = cli.run("models", "average", other, nano_checkpoint, tmp_path / "bad", "--weight", "1.5")
    assert res.returncode != 0 and "weight: expected a number in [0, 1]" in res.stderr and "Traceback" not in res.stderr
    res = cli.run("models", "average", other, nano_checkpoint, tmp_path / "avg", "--weight", "0.5")
    assert res.returncode != 0 and "output folder is not empty" in res.stderr and "Traceback" not in res.stderr
    assert torch.allclose(load_file(tmp_path / "avg" / "model.safetensors")[k], avg[k])  # untouched
    assert not (tmp_path / "bad").exists()

    from rlhf.models.lm import create_model
    from rlhf.models.tokenizer import train_tokenizer

    tok = train_tokenizer(tiny_world.corpus(), vocab_size=300)
    save_model(create_model("nano", tok, max_len=64, seed=0), tok, tmp_path / "vocab300")
    res = cli.run("models", "average", other, tmp_path / "vocab300", tmp_path / "bad")
    assert res.returncode != 0 and "vocabulary differs" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "bad").exists()


# ---------------------------------------------------------------- the final policy's share, chosen per run


def _rows(gains: dict[float, tuple[list[float], list[float]]]) -> list[dict]:
    """Candidate rows as eval.averaging.candidate_scores returns them: per weight, greedy and sampled scores."""
    return [{"weight": w, "greedy": {"scores": g}, "sampled": {"scores": s}} for w, (g, s) in gains.items()]


BASE = [0.0, 1.0, -1.0, 0.5, -0.5, 0.2]


def _shift(scores, by, noise=(0.1, -0.1, 0.05, -0.05, 0.0, 0.0)):
    return [x + by + n for x, n in zip(scores, noise)]


def test_choose_takes_the_largest_share_the_reward_models_find_no_worse_on_both_decodings():
    from rlhf.eval.averaging import choose

    # paired standard error of a constant shift plus this noise: sd(noise) / sqrt(6) = 0.0289
    rows = _rows({0.0: (BASE, BASE), 0.1: (_shift(BASE, 0.02), _shift(BASE, -0.01)),
                  0.2: (_shift(BASE, -0.02), _shift(BASE, 0.0)), 0.3: (_shift(BASE, 0.9), _shift(BASE, -0.4))})
    weight, table = choose(rows, margin=1.0)
    assert weight == 0.2  # 0.3 scores far higher greedy but far lower sampled: it does not qualify
    assert [r["qualifies"] for r in table] == [False, True, True, False]
    assert table[2]["gain_greedy"] == pytest.approx(-0.02) and table[3]["gain_sampled"] == pytest.approx(-0.4)
    noise = [0.1, -0.1, 0.05, -0.05, 0.0, 0.0]
    sd = (sum(n * n for n in noise) / 5) ** 0.5
    assert table[2]["se_greedy"] == pytest.approx(sd / 6 ** 0.5, abs=1e-4)
    assert choose(rows, margin=0.5)[0] == 0.1  # -0.02 is 0.69 standard errors down: outside a half-SE margin


def test_choose_keeps_the_policy_when_every_share_scores_lower_beyond_the_noise():
    from rlhf.eval.averaging import choose

    rows = _rows({0.0: (BASE, BASE), 0.1: (_shift(BASE, -0.1), _shift(BASE, 0.0)),
                  0.2: (_shift(BASE, 0.5), _shift(BASE, -0.3))})
    weight, table = choose(rows, margin=1.0)
    assert weight == 0.0 and not any(r["qualifies"] for r in table)
    assert choose(rows, margin=4.0)[0] == 0.1  # a margin of 4 standard errors lets -0.1 (3.5 SE) through
