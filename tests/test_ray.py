"""Independent runs as Ray tasks (`rlhf.studies.runner`): `rlhf study seeds` on a local Ray (2 CPUs, one Ray
session for this module) gives the same tables as the same study run one seed after another; tasks come back
in order with the threads they asked for; a bad `--ray` address is one line."""
from __future__ import annotations

import json
import os

import pytest

from tests.test_pipeline import SMOKE


@pytest.fixture(scope="module")
def local_ray():
    import ray

    import rlhf
    from rlhf.studies import runner

    # normal priority: Ray's default niceness 15 starves the tasks on a busy test machine (runner.py)
    os.environ.setdefault("RAY_worker_niceness", "0")
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False,
             runtime_env={"py_modules": [os.path.dirname(rlhf.__file__)]})
    assert runner.connect("local") == (ray, False)  # an initialized Ray is used as it is, and not shut down
    yield ray
    ray.shutdown()


def test_tasks_come_back_in_order_with_their_threads(local_ray):
    from rlhf.studies.runner import map_runs

    assert map_runs(abs, [-3, 1, -2], ray="local") == [3, 1, 2]
    # each task runs with num_cpus threads, in a worker process (not this one)
    assert map_runs(os.getenv, ["OMP_NUM_THREADS", "MKL_NUM_THREADS"], ray="local", num_cpus=2) == ["2", "2"]
    assert map_runs(abs, [], ray="local") == []


def _untimed(d):
    """A summary without its wall-clock numbers (seconds, per-second rates): what must not depend on Ray."""
    if isinstance(d, dict):
        return {k: _untimed(v) for k, v in d.items() if "seconds" not in k and not k.endswith("_per_s")}
    if isinstance(d, list):
        return [_untimed(v) for v in d]
    return d


def _md_sections(md: str) -> dict[str, str]:
    parts = md.split("\n## ")[1:]
    return {p.split("\n", 1)[0]: p.split("\n", 1)[1] for p in parts}


@pytest.mark.slow
def test_seeds_study_on_ray_equals_the_sequential_study(local_ray, cli, tmp_path):
    from rlhf.config import load_config
    from rlhf.pipeline import PipelineConfig
    from rlhf.studies import seeds

    # the sequential study in its own process (one thread), while the Ray study runs its two seeds at once
    seq = cli.start("study", "seeds", "--seeds", "0,1", *SMOKE, "-o", tmp_path / "seq")
    sets = [SMOKE[i + 1] for i, x in enumerate(SMOKE) if x == "--set"]
    cfg = seeds.SeedsConfig(str(tmp_path / "ray"), [0, 1], load_config(PipelineConfig, None, sets))
    seeds.run(cfg, show_progress=False, ray="local", ray_cpus=1)
    res = seq.result()
    assert res.returncode == 0, res.stderr[-2000:]

    a, b = tmp_path / "seq", tmp_path / "ray"
    for s in (0, 1):
        ja, jb = (json.loads((d / f"seed-{s}" / "summary.json").read_text()) for d in (a, b))
        for key in ("table", "sampled_table", "headline"):
            assert json.dumps(ja[key]) == json.dumps(jb[key]), (s, key)
        assert _untimed(ja["stages"]) == _untimed(jb["stages"])
    ra, rb = (json.loads((d / "summary.json").read_text()) for d in (a, b))
    assert ra["ran_now"] == rb["ran_now"] == [0, 1]
    for key in ("greedy", "sampled"):
        assert ra[key] == rb[key], key
    assert _untimed(ra["per_seed_stages"]) == _untimed(rb["per_seed_stages"])
    # the study's markdown tables, all but the wall-clock ones
    ma, mb = (_md_sections((d / "summary.md").read_text()) for d in (a, b))
    assert ma.keys() == mb.keys()
    timed = {"targets", "per seed: stage seconds", "per seed: labels, reward model, PPO"}
    assert {k: v for k, v in ma.items() if k not in timed} == {k: v for k, v in mb.items() if k not in timed}
    assert (b / "report.html").is_file() and not list(tmp_path.rglob("*.partial-*"))


@pytest.mark.parametrize("address, says", [("127.0.0.1:1", "nothing answers at 127.0.0.1:1"),
                                           ("not-an-address", "expected 'local', 'auto', HOST:PORT")])
def test_a_bad_ray_address_is_one_line(cli, tmp_path, address, says):
    res = cli.run("study", "seeds", "--seeds", "0", *SMOKE, "--ray", address, "-o", tmp_path / "s")
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [res.stderr.strip()]
    assert f"--ray {address}" in res.stderr and says in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "s").exists()


@pytest.mark.slow
def test_compare_on_ray_equals_the_sequential_compare(local_ray, cli, tmp_path):
    from rlhf.config import load_config
    from rlhf.studies import compare
    from tests.test_compare import SMOKE as CMP

    args = ("study", "compare", "--seeds", "0,1", "--methods", "grpo,dpo", "--budget", "16")
    seq = cli.start(*args, *CMP, "-o", tmp_path / "seq")
    sets = [CMP[i + 1] for i, x in enumerate(CMP) if x == "--set"]
    cfg = load_config(compare.CompareConfig, None, sets)
    cfg.out, cfg.seeds, cfg.methods, cfg.budget = str(tmp_path / "ray"), [0, 1], ["grpo", "dpo"], 16
    compare.run(cfg, show_progress=False, ray="local", ray_cpus=1)
    res = seq.result()
    assert res.returncode == 0, res.stderr[-2000:]
    ra, rb = (json.loads((tmp_path / d / "summary.json").read_text()) for d in ("seq", "ray"))
    for key in ("greedy", "sampled"):  # every gold, KL and RM number per method and seed (timings aside)
        assert _no_seconds(ra[key]) == _no_seconds(rb[key]), key
    assert ra["rm_calls"] == rb["rm_calls"]


def _no_seconds(value):
    if isinstance(value, dict):
        return {k: _no_seconds(v) for k, v in value.items() if "seconds" not in k}
    if isinstance(value, list):
        return [_no_seconds(v) for v in value]
    return value
