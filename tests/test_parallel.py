"""rlhf.parallel on real processes: 2 gloo ranks under torchrun (each asserting the world size is 2)."""
import json
from pathlib import Path

import pytest
import torch

from rlhf import parallel
from rlhf.errors import RLHFError
from tests.distributed.launch import torchrun


def test_one_process_is_the_identity():
    x = torch.arange(6.0)
    assert parallel.world_size() == 1 and parallel.is_main()
    assert parallel.shard([1, 2, 3]) == [1, 2, 3]
    mean, var = parallel.global_mean_var(x)
    assert float(mean) == pytest.approx(2.5) and float(var) == pytest.approx(float(torch.var(x)))
    assert parallel.mean_metrics({"a": 1.0}) == {"a": 1.0}
    with pytest.raises(RLHFError, match="parallel.strategy"):
        parallel.ParallelConfig(strategy="zero").validate()


def test_two_ranks_global_statistics_and_one_run_folder(tmp_path):
    torchrun(["tests/distributed/check_dist.py", str(tmp_path)], cwd=str(Path(__file__).parents[1]))
    ranks = [json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in (0, 1)]
    g = torch.Generator().manual_seed(0)
    full = torch.randn(12, 7, generator=g, dtype=torch.float64)
    mask = (torch.rand(12, 7, generator=g) > 0.3).double()
    vals = full[mask.bool()]
    for r in ranks:  # the statistics of the concatenated batch, on every rank
        assert r["mean"] == pytest.approx(float(vals.mean()), abs=1e-12)
        assert r["var"] == pytest.approx(float(vals.var()), abs=1e-12)
        assert r["loss"] == ranks[0]["loss"] == pytest.approx(float(full.sum()) / 2)
        assert r["gathered"] == [0, 1] and r["bcast"] == 1
    whitened = torch.tensor(ranks[0]["whitened"] + ranks[1]["whitened"], dtype=torch.float64)
    expect = (full - vals.mean()) * torch.rsqrt(vals.var() + 1e-8)
    assert torch.allclose(whitened, expect, atol=1e-12)
    assert ranks[0]["picked"] == [0, 1, 2, 3] and ranks[1]["picked"] == [4, 5, 6, 7]
    run = tmp_path / "run"  # one folder, renamed into place once; rank 0's files and both ranks' shards
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("run")) == ["run"]
    assert (run / "shard-0.txt").read_text() == "0" and (run / "shard-1.txt").read_text() == "1"
    assert json.loads((run / "summary.json").read_text()) == {"result": {"rank": 0}}
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1
