"""`rlhf study signals`: gold-free stop rules judged against the gold reward's peak, on hand-made runs."""
from __future__ import annotations

import json

import numpy as np
import pytest

from rlhf.errors import RLHFError
from rlhf.studies import signals


def _rows(kl, gold, dis=None, abstain=None):
    rows = []
    for i, (k, g) in enumerate(zip(kl, gold)):
        r = {"step": i + 1, "kl": k, "gold": g}
        if dis is not None:
            r["ens_disagreement"] = dis[i]
        if abstain is not None:
            r["rate_abstain"], r["rate_refuse"] = abstain[i], 0.0
        rows.append(r)
    return rows


def test_stop_index_reads_the_trailing_mean_of_three():
    kl = np.array([0.0, 1.0, 2.0, 4.0, 4.0, 4.0])
    # trailing means: 0, 0.5, 1, 2.33, 3.33, 4 -> first above 2 at index 3, above 3 at index 4
    assert signals.stop_index(kl, 2.0, "absolute") == 3
    assert signals.stop_index(kl, 3.0, "absolute") == 4
    assert signals.stop_index(kl, 5.0, "absolute") is None
    dis = np.array([0.4, 0.4, 0.4, 0.4, 0.6, 0.8, 0.8])  # start 0.4; 1.25x = 0.5; trailing 0.467, 0.6 -> index 5
    assert signals.stop_index(dis, 1.25, "relative") == 5


def test_track_on_a_run_that_peaks_then_falls():
    gold = [0.0, 0.5, 1.0, 1.0, 1.0, 0.5, 0.0, -0.5, -1.0, -1.0]
    kl = [0.0, 0.5, 1.0, 1.5, 2.5, 3.5, 5.0, 6.0, 7.0, 8.0]
    out = signals.track(_rows(kl, gold, dis=[0.5] * 5 + [0.7, 0.9, 1.0, 1.0, 1.0], abstain=[0.1] * 10))
    smooth = [np.mean(gold[max(0, i - 2): i + 3]) for i in range(len(gold))]
    assert out["gold_peak"]["step"] == int(np.argmax(smooth)) + 1
    rule = out["rules"]["KL budget 2 nats"]  # trailing KL means 0, .25, .5, 1, 1.67, 2.5 -> stops on row 6
    assert rule["stops"] and rule["step"] == 6 and rule["gold"] == pytest.approx(smooth[5])
    assert out["rules"]["abstain + refuse rate 2x start"]["stops"] is False
    assert out["end"]["gold"] == pytest.approx(smooth[-1])


def test_cli_prints_a_table_and_rejects_a_missing_run(cli, tmp_path):
    run = tmp_path / "ppo"
    run.mkdir()
    rows = _rows([0.1 * i for i in range(8)], [0.1 * i for i in range(8)])
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    res = cli.run("study", "signals", run)
    assert res.returncode == 0, res.stderr
    assert "KL budget 2 nats" in res.stdout and "gold peak" in res.stdout
    res = cli.run("study", "signals", tmp_path / "missing")
    assert res.returncode == 2 and "metrics.jsonl not found" in res.stderr and "Traceback" not in res.stderr


def test_too_short_a_run_is_a_clear_error():
    with pytest.raises(RLHFError, match="at least 5 iterations"):
        signals.track(_rows([0, 1], [0, 1]))
