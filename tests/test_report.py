"""`rlhf report` and the trackers: reports of real smoke PPO runs opened in headless Chromium (no console error,
no network request; curves, samples, the over-optimization view and the differing config keys found on the page),
TensorBoard event files read back with TensorBoard's own reader, and bad input as one line.

Two 3-step PPO runs of a tiny model (seconds each) are made once for the module. Screenshots are kept under
pytest's tmp path and copied to $RLHF_ARTIFACTS when it is set.
"""
from __future__ import annotations

import ast
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from rlhf import tracking
from rlhf.config import load_config
from rlhf.errors import RLHFError
from rlhf.report import write_report
from rlhf.stages import PPOStage, run_ppo
from tests.test_ppo import cfg_for, one_thread, ppo_models  # noqa: F401  (fixtures)

SRC = Path(__file__).resolve().parents[1] / "src" / "rlhf"


@pytest.fixture(scope="module")
def two_runs(ppo_models, tiny_world_config, tmp_path_factory, one_thread):  # noqa: F811
    """Two PPO runs on the world (gold reward logged), samples every step, held-out eval every 2 steps; the
    second with another KL coefficient. Trackers: the default (TensorBoard)."""
    from rlhf.train.ppo import KLConfig

    tracking.choose(None)
    root = tmp_path_factory.mktemp("report_runs")
    outs = []
    for name, beta in (("ppo-a", 0.1), ("ppo-b", 0.02)):
        cfg = cfg_for(ppo_models, root / name, tiny_world_config, steps=3, samples_every=1, eval_every=2,
                      eval_prompts=4, kl=KLConfig(beta=beta))
        run_ppo(cfg, show_progress=False)
        outs.append(root / name)
    return outs


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------- trackers


def test_tensorboard_event_files_hold_the_values_of_metrics_jsonl(two_runs):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = two_runs[0]
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    want: dict[str, list[tuple[int, float]]] = {}
    for row in _rows(run):
        for key, value in row.items():
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                want.setdefault(key, []).append((row["step"], value))
    assert {"rm_score", "gold", "kl", "eval_gold", "eval_proxy"} <= set(want)
    assert set(events.Tags()["scalars"]) == set(want)
    for key, points in want.items():
        got = [(e.step, e.value) for e in events.Scalars(key)]
        # TensorBoard stores scalars as float32: the same numbers, rounded to float32
        assert got == [(step, float(np.float32(v))) for step, v in points], key


def test_tracking_key_chooses_the_trackers_and_unknown_ones_are_errors(tmp_path, tiny_world_config):
    try:
        load_config(PPOStage, overrides=["tracking=[]"])
        assert tracking.chosen() == []
        from rlhf.rundir import RunDir

        with RunDir(tmp_path / "off") as rd:
            rd.log(1, loss=1.0)
        assert (tmp_path / "off" / "metrics.jsonl").exists() and not (tmp_path / "off" / "tensorboard").exists()
        load_config(PPOStage, overrides=["tracking=tensorboard"])
        assert tracking.chosen() == ["tensorboard"]
        with pytest.raises(RLHFError, match="--set: tracking: unknown tracker 'tensorbored'; trackers are tensorboard"):
            load_config(PPOStage, overrides=["tracking=[tensorbored]"])
        (tmp_path / "c.yaml").write_text("tracking: 3\n")
        with pytest.raises(RLHFError, match=r"c.yaml: tracking: expected a list of tracker names"):
            load_config(PPOStage, tmp_path / "c.yaml")
    finally:
        tracking.choose(None)


def test_a_run_that_logs_nothing_gets_no_event_files(tmp_path):
    from rlhf.rundir import RunDir

    with RunDir(tmp_path / "quiet") as rd:
        rd.write_summary("nothing logged", {"a": 1})
    assert not (tmp_path / "quiet" / "tensorboard").exists()


# ---------------------------------------------------------------- the report in a browser


@pytest.fixture
def page(browser):  # tests/conftest.py: Chromium through Playwright
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    # parsing Plotly's 4.8 MB bundle and drawing ~25 charts took 1-2 s on an idle core but over 30 s (the default
    # timeout) on the shared 2-core machine at load 16
    page.set_default_timeout(240_000)
    page.problems = []  # console errors, page errors and every request that is not a local file
    page.on("console", lambda m: page.problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: page.problems.append(f"page error: {e}"))

    def route(r):
        if r.request.url.startswith("file://"):
            r.continue_()
        else:
            page.problems.append(f"network request: {r.request.url}")
            r.abort()

    page.route("**/*", route)
    page.on("request", lambda r: None if r.url.startswith(("file://", "data:")) else
            page.problems.append(f"request: {r.url}"))
    yield page


def _open(page, report: Path) -> None:
    page.goto(report.resolve().as_uri())
    page.wait_for_selector(".curve .main-svg")


def _screenshot(page, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    if os.environ.get("RLHF_ARTIFACTS"):
        Path(os.environ["RLHF_ARTIFACTS"]).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(os.environ["RLHF_ARTIFACTS"]) / name)
    assert path.stat().st_size > 10_000
    return path


def test_report_of_one_ppo_run_in_chromium(two_runs, page, tmp_path):
    run = two_runs[0]
    report = write_report([run], tmp_path / "one.html")
    html = report.read_text()
    assert "<script src" not in html and "<link" not in html and "@import" not in html  # nothing to fetch
    _open(page, report)
    metrics = {k for row in _rows(run) for k in row if k != "step"}
    curves = page.locator(".curve")
    assert curves.count() == len(metrics)
    assert page.locator(".curve .scatterlayer .trace").count() == len(metrics)  # one SVG trace per metric
    gold = page.locator('.curve[data-metric="gold"] .scatterlayer .trace path.js-line')
    assert gold.count() == 1 and gold.first.get_attribute("d").count("L") == 2  # steps 1-3: one line, 3 points

    # the smoothing slider redraws the curves with the raw series behind the smoothed one
    page.locator("#smoothing").fill("0.6")
    page.wait_for_function("document.querySelector('#smoothing-value').textContent === '0.60'")
    assert page.locator(".curve .scatterlayer .trace").count() == 2 * len(metrics)

    # samples: every row of samples.jsonl, with its RM score, gold score and the step's KL
    samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    assert len(samples) >= 6
    rows = page.locator("#samples tbody tr")
    assert rows.count() == len(samples)
    headers = page.locator("#samples thead th").all_inner_texts()
    assert {"step", "prompt", "response", "rm", "gold", "kl (step mean)"} <= set(headers)
    first = dict(zip(headers, rows.first.locator("td").all_inner_texts()))
    assert first["prompt"] == samples[0]["prompt"] and float(first["rm"]) == samples[0]["rm"]
    kl1 = next(r["kl"] for r in _rows(run) if r["step"] == samples[0]["step"] and "kl" in r)
    assert float(first["kl (step mean)"]) == pytest.approx(kl1, rel=1e-3, abs=1e-6)
    page.locator("#sample-step").select_option("2")
    assert rows.count() == sum(s["step"] == 2 for s in samples)
    page.locator("#sample-step").select_option("")
    needle = samples[0]["prompt"][:12]
    page.locator("#sample-filter").fill(needle)
    assert rows.count() == sum(needle.lower() in (s["prompt"] + s["response"]).lower() for s in samples) > 0
    page.locator("#sample-filter").fill("no sample says this 1234")
    assert rows.count() == 0

    # over-optimization: proxy and gold against sqrt(KL), training batches and held-out
    assert page.locator(".overopt-plot .scatterlayer .trace").count() == 4
    # the stage table (summary.json) and the resolved config
    assert "episodes_per_s" in page.locator("#summary").inner_text()
    assert "rollout_batch_size: 8" in page.locator("#config pre").first.inner_text()
    assert page.locator("#compare").count() == 0  # one run: no side-by-side table
    page.locator("#sample-filter").fill("")
    _screenshot(page, tmp_path, "report-one-run.png")
    assert page.problems == []


def test_report_comparing_two_runs_in_chromium(two_runs, page, tmp_path):
    report = write_report(two_runs, tmp_path / "two.html")
    _open(page, report)
    diff = page.locator("#config-diff tr.differs")
    keys = diff.locator("td.key").all_inner_texts()
    assert keys == ["kl.beta"]  # the one setting that differs (out is not a setting)
    assert diff.first.locator("td").all_inner_texts() == ["kl.beta", "0.1", "0.02"]
    assert page.locator("#config-diff tr.differs").first.evaluate("e => getComputedStyle(e.cells[1]).backgroundColor") \
        not in ("rgba(0, 0, 0, 0)", "rgb(255, 255, 255)")  # marked
    assert page.locator("#config-diff tr.same:visible").count() == 0
    page.locator("#only-differing").uncheck()
    assert page.locator("#config-diff tr.same:visible").count() > 20
    # the curves overlay both runs: two traces per chart, two names in each legend
    n = page.locator(".curve").count()
    assert n > 10 and page.locator(".curve .scatterlayer .trace").count() == 2 * n
    assert page.locator('.curve[data-metric="rm_score"] .legendtext').evaluate_all(
        "els => els.map(e => e.textContent)") == ["ppo-a", "ppo-b"]
    assert page.locator("#samples tbody tr").count() == sum(
        len((r / "samples.jsonl").read_text().splitlines()) for r in two_runs)
    assert page.locator(".overopt-plot").count() == 2
    assert page.locator("#result-diff").count() == 1
    page.locator("#only-differing").check()
    _screenshot(page, tmp_path, "report-two-runs.png")
    assert page.problems == []


# ---------------------------------------------------------------- every kind of folder, bad input


def test_folders_without_metrics_samples_or_config_still_make_a_report(tmp_path):
    study = tmp_path / "study"
    (study / "seed-0" / "sft-eval").mkdir(parents=True)
    summary = {"greedy": {"stages": [{"stage": "SFT", "gold": 0.1}]}, "x": float("nan")}
    (study / "summary.json").write_text(json.dumps(summary))
    (study / "seed-0" / "sft-eval" / "compare.json").write_text(json.dumps({"greedy": {"gold_mean": 0.1}, "run": {}}))
    (study / "seed-0" / "dpo").mkdir()
    # a run killed mid-line
    (study / "seed-0" / "dpo" / "metrics.jsonl").write_text('{"step": 1, "loss": 0.5}\n{"step": 2, "lo')
    html = write_report([study]).read_text()
    assert (study / "report.html").exists()
    data = html.split('id="report-data">', 1)[1].split("</script>", 1)[0]
    parsed = json.loads(data)
    run = parsed["runs"][0]
    assert run["kind"] == "study (compare)"
    assert [p["name"] for p in run["parts"]] == [".", "seed-0/dpo", "seed-0/sft-eval"]
    assert run["parts"][1]["metrics"] == {"loss": [[1], [0.5]]}
    assert run["parts"][0]["summary"]["x"] is None


def test_report_cli_bad_input_is_one_line(cli, tmp_path):
    (tmp_path / "empty").mkdir()
    for arg, msg in ((tmp_path / "nope", "no such folder"), (tmp_path / "empty", "not a run folder")):
        res = cli.run("report", arg)
        assert res.returncode == 2, res.stderr
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0] == f"error: {arg}: {msg}" + (
            " (none of config.yaml, summary.json, metrics.jsonl, compare.json in it)" if arg.name == "empty" else "")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "summary.json").write_text("{oops")
    res = cli.run("report", tmp_path / "bad")
    assert res.returncode == 2 and res.stderr.startswith(f"error: {tmp_path / 'bad' / 'summary.json'}: not JSON")
    assert len(res.stderr.strip().splitlines()) == 1


def test_report_cli_writes_and_prints_the_path(cli, two_runs, tmp_path):
    res = cli.run("report", *two_runs, "-o", tmp_path / "r.html")
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith(f"report: {tmp_path / 'r.html'} (") and (tmp_path / "r.html").stat().st_size > 1e6


def test_the_report_package_only_reads_run_folders():
    """No trainer imports the report, and the report imports nothing of the trainers, models or world."""
    def rlhf_imports(path: Path) -> set[str]:
        tree = ast.parse(path.read_text())
        nodes = list(ast.walk(tree))
        froms = {n.module for n in nodes if isinstance(n, ast.ImportFrom) and (n.module or "").startswith("rlhf")}
        plain = {a.name for n in nodes if isinstance(n, ast.Import) for a in n.names if a.name.startswith("rlhf")}
        return froms | plain

    for f in (SRC / "train").glob("*.py"):
        assert not any(m.startswith("rlhf.report") for m in rlhf_imports(f)), f
    for f in (SRC / "report").glob("*.py"):
        assert rlhf_imports(f) <= {"rlhf.errors", "rlhf.report.load"}, f
