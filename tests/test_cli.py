"""The real `rlhf` CLI in subprocesses: a smoke run of every stage at nano size, checkpoints that plain
transformers loads, run-directory layout, and bad input -> one line on stderr, no traceback, non-zero exit.

All commands start at once (a few at a time) when the module's first test asks for them.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

OLD_RUN = {"config.yaml": "steps: 1\n", "metrics.jsonl": '{"step": 1, "loss": 9.0}\n', "summary.md": "# old run\n",
           "model/config.json": "{}", "plots/loss.png": "not really a png"}


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("cli")
    (work / "bad.jsonl").write_text(
        '{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}\n'
        "\n"
        '{"messages": [oops]}\n')
    (work / "bad.yaml").write_text("steps: 3\nmodel:\n  szie: nano\n")
    for rel, text in OLD_RUN.items():
        (work / "existing" / rel).parent.mkdir(parents=True, exist_ok=True)
        (work / "existing" / rel).write_text(text)
    (work / "not_a_model").mkdir()
    return work


@pytest.fixture(scope="module")
def runs(cli, work, nano_checkpoint, tiny_world_sets, tiny_world_top_sets, tiny_pretrain_sets):
    ckpt = str(nano_checkpoint)
    commands = {
        # smoke runs
        "pretrain": ["pretrain", "-q", *tiny_pretrain_sets, "-o", "pt"],
        "sft": ["sft", "-q", *tiny_world_sets, "--set", f"init={ckpt}", "--set", "epochs=0.25",
                "--set", "batch_size=8", "--set", "max_len=64", "-o", "sft"],
        "eval": ["eval", "-m", ckpt, *tiny_world_top_sets, "--max-new-tokens", "4", "-o", "ev"],
        "generate": ["generate", "-m", ckpt, "-p", "What is 3 plus 4?", "-p", "Who made the Dunfen lamp?", "-n", "2",
                     "--max-new-tokens", "4", "--temperature", "1.0"],
        "world": ["world", "-o", "w", *tiny_world_top_sets],
        # bad input
        "misspelt": ["world", "--set", "n_peple=3"],
        "misspelt_yaml": ["pretrain", "-c", "bad.yaml"],
        "missing_config": ["world", "-c", "nope.yaml"],
        "missing_value": ["world", "--set", "seed"],
        "world_type": ["world", "--set", "n_people=many"],
        "debug": ["world", "--set", "n_peple=3", "--debug"],
        "size_mid_run": ["pretrain", "-q", *tiny_pretrain_sets, "--set", "model.size=huge", "-o", "existing"],
        "bad_jsonl": ["sft", "-q", *tiny_world_sets, "--set", f"init={ckpt}", "--set", "data=bad.jsonl", "-o",
                      "sft_bad"],
        "no_checkpoint": ["eval", "-m", "nope/model", *tiny_world_top_sets],
    }
    return {name: cli.start(*args, cwd=work) for name, args in commands.items()}


def ok(runs, name):
    proc = runs[name].result()
    assert proc.returncode == 0, f"{name} failed:\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr
    # Hugging Face's tqdm bars are off; -q runs write nothing else on stderr
    assert "Loading weights" not in proc.stderr and "Writing model shards" not in proc.stderr
    return proc


def one_line_error(runs, name, *needles):
    proc = runs[name].result()
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith("error: ")
    for needle in needles:
        assert needle in lines[0]
    return lines[0]


def assert_run_dir(path: Path, n_steps: int | None = None):
    for name in ("config.yaml", "metrics.jsonl", "summary.md", "summary.json"):
        assert (path / name).is_file(), name
    rows = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
    assert rows and all("step" in r for r in rows)
    if n_steps is not None:
        assert [r["step"] for r in rows] == list(range(1, n_steps + 1))
    pngs = list((path / "plots").glob("*.png"))
    assert pngs and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    assert not list(path.parent.glob(f"{path.name}.partial-*")) and not list(path.parent.glob(f"{path.name}.old-*"))
    return rows


def assert_hf_loadable(path: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    assert tok.eos_token_id == model.config.eos_token_id and tok.pad_token_id == model.config.pad_token_id
    assert model.config.vocab_size == len(tok)
    assert "Assistant:" in tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False,
                                                   add_generation_prompt=True)
    import torch

    ids = torch.tensor([tok.encode("Kalo is a", add_special_tokens=False)])
    assert model(input_ids=ids).logits.shape == (1, ids.shape[1], len(tok))


# ---------------- smoke runs ----------------
def test_world(runs, work, tmp_path, tiny_world_config):
    proc = ok(runs, "world")
    assert "world written to w" in proc.stdout
    from rlhf.world import World

    World(tiny_world_config).save(tmp_path)  # same config in this process: the same bytes
    assert _snapshot(work / "w") == _snapshot(tmp_path)


def test_pretrain(runs, work):
    from rlhf.config import load_config
    from rlhf.stages import PretrainStage as PretrainConfig

    proc = ok(runs, "pretrain")
    assert proc.stdout.startswith("# Pretraining")
    rows = assert_run_dir(work / "pt", n_steps=3)
    assert rows[-1]["eval_loss"] > 0 and rows[-1]["tokens_per_s"] > 0
    cfg = load_config(PretrainConfig, work / "pt" / "config.yaml")  # the saved config is a valid config
    assert cfg.steps == 3 and cfg.model.size == "nano" and cfg.world.n_demonstrations == 64
    summary = json.loads((work / "pt" / "summary.json").read_text())
    assert summary["result"]["steps"] == 3
    assert_hf_loadable(work / "pt" / "model")


def test_sft(runs, work):
    proc = ok(runs, "sft")
    assert proc.stdout.startswith("# Supervised fine-tuning")
    assert_run_dir(work / "sft", n_steps=2)  # 64 demonstrations * 0.25 epochs / batch 8
    assert yaml.safe_load((work / "sft" / "config.yaml").read_text())["epochs"] == 0.25
    assert_hf_loadable(work / "sft" / "model")


def test_eval(runs, work):
    proc = ok(runs, "eval")
    assert "gold_mean" in proc.stdout
    ev = work / "ev"
    summary = json.loads((ev / "summary.json").read_text())
    samples = [json.loads(line) for line in (ev / "samples.jsonl").read_text().splitlines()]
    assert summary["n"] == len(samples) > 0
    assert {s["kind"] for s in samples} == {"known_fact", "unknown_entity", "arithmetic", "harmful", "format"}
    assert (ev / "plots" / "gold_by_kind.png").read_bytes()[:4] == b"\x89PNG"


def test_generate(runs):
    proc = ok(runs, "generate")
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [r["prompt"] for r in rows] == ["What is 3 plus 4?"] * 2 + ["Who made the Dunfen lamp?"] * 2
    assert all(isinstance(r["response"], str) for r in rows)


# ---------------- bad input ----------------
def test_misspelt_key(runs):
    one_line_error(runs, "misspelt", "unknown config key 'n_peple'", "did you mean 'n_people'")


def test_misspelt_key_in_a_config_file(runs):
    one_line_error(runs, "misspelt_yaml", "bad.yaml", "'model.szie'", "did you mean 'model.size'")


def test_missing_config_file_or_value(runs):
    one_line_error(runs, "missing_config", "config file not found: nope.yaml")
    one_line_error(runs, "missing_value", "--set expects key=value, got 'seed'")


def test_type_error(runs):
    one_line_error(runs, "world_type", "key 'n_people' expects int, got 'many'")


def test_debug_shows_the_traceback(runs):
    proc = runs["debug"].result()
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr and "RLHFError" in proc.stderr and "n_peple" in proc.stderr


def test_unknown_size_mid_run_leaves_the_existing_run_untouched(runs, work):
    one_line_error(runs, "size_mid_run", "unknown model size 'huge'", "nano")
    assert _snapshot(work / "existing") == {rel: text.encode() for rel, text in OLD_RUN.items()}
    assert not list(work.glob("existing.partial-*")) and not list(work.glob("existing.old-*"))


def test_malformed_jsonl_names_file_and_line(runs, work):
    one_line_error(runs, "bad_jsonl", "bad.jsonl:3:", "malformed JSON")
    assert not (work / "sft_bad").exists() and not list(work.glob("sft_bad.partial-*"))


def test_nonexistent_checkpoint(runs):
    one_line_error(runs, "no_checkpoint", "checkpoint not found: nope/model")


def test_folder_without_a_model_is_not_a_checkpoint(work):
    from rlhf.errors import RLHFError
    from rlhf.models.lm import load_causal_lm

    with pytest.raises(RLHFError, match="not a Hugging Face model folder"):
        load_causal_lm(work / "not_a_model")


def test_malloc_jemalloc_reruns_the_command_with_jemalloc_loaded(cli, tmp_path):
    """`--malloc jemalloc` re-runs the command with libjemalloc preloaded; the re-run process checks that it is
    loaded (else one error line, exit 2), so exit 0 means the command ran on jemalloc. scripts/setup.sh test
    installs Debian's libjemalloc2."""
    r = cli.run("--malloc", "jemalloc", "world", "-o", tmp_path / "w", "--set", "n_people=8")
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("malloc: jemalloc (LD_PRELOAD=") == 1 and (tmp_path / "w").is_dir()
    r = cli.run("--malloc=system", "world", "-o", tmp_path / "s", "--set", "n_people=8")
    assert r.returncode == 0 and "malloc:" not in r.stderr


@pytest.mark.parametrize("args,message", [
    (["--malloc", "tcmalloc"], "error: --malloc: expected system or jemalloc, got 'tcmalloc'"),
    (["--malloc"], "error: --malloc: expected system or jemalloc after it"),
])
def test_malloc_bad_value_is_one_line(cli, tmp_path, args, message):
    r = cli.run("world", "-o", tmp_path / "w", *args)
    assert r.returncode == 2 and r.stderr.strip() == message and not (tmp_path / "w").exists()


def test_malloc_jemalloc_missing_is_one_clear_error(monkeypatch):
    import ctypes.util

    import rlhf.cli as cli_module
    from rlhf.errors import RLHFError

    monkeypatch.setattr(cli_module, "JEMALLOC", ())
    monkeypatch.setattr(cli_module, "_jemalloc_loaded", lambda: False)
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: None)
    monkeypatch.delenv("RLHF_MALLOC_PRELOADED", raising=False)
    with pytest.raises(RLHFError, match="libjemalloc is not installed"):
        cli_module._malloc("jemalloc", ["world"])


# ---------------- the command tree ----------------
def _tree(command, prefix=()) -> dict[tuple[str, ...], object]:
    """Every command of the click tree by its path, groups included."""
    out = {prefix: command}
    for name, sub in getattr(command, "commands", {}).items():  # a group (typer ships its own click)
        out.update(_tree(sub, prefix + (name,)))
    return out


def test_one_command_tree():
    """Each area is one group: every control command under `rlhf control`, every study under `rlhf study`, the
    labeling commands under `rlhf label`, the model tools under `rlhf models`; the top level holds the stages,
    the trainers and the one-model tools, and no top-level name is a group's name with a suffix."""
    import typer

    from rlhf.cli import app

    tree = _tree(typer.main.get_command(app))
    top = {p[0] for p in tree if len(p) == 1}
    assert top == {"world", "eval", "generate", "chat", "pretrain", "sft", "reward", "ppo", "dpo", "grpo", "rloo",
                   "raft", "rrhf", "best-of-n", "pipeline", "study", "label", "control", "models", "report"}
    groups = {p[0] for p in tree if len(p) == 2}
    assert not [name for name in top for g in groups if name != g and name.startswith(g)]
    children = lambda *path: {p[-1] for p in tree if p[:-1] == path and len(p) == len(path) + 1}  # noqa: E731
    assert children("control") == {"highway", "dagger", "tamer", "coach", "clips"}
    assert children("control", "clips") == {"make", "fit"}
    assert children("study") == {"seeds", "compare", "overopt", "signals"}
    assert {"simulate", "generate", "serve", "import", "export"} <= children("label")
    assert children("models") == {"import-gguf", "average", "info"}
    assert children("reward") == {"eval"}


@pytest.mark.parametrize("old,new", [("control-highway", "control highway"), ("control-clips", "control clips"),
                                     ("compare", "study compare")])
def test_a_moved_command_says_where_it_went_and_runs_there(cli, old, new):
    """The old top-level names are hidden (not in --help) and run the command at its new place after one line."""
    assert f" {old} " not in cli.run("--help").stdout
    proc = cli.run(old, "--help")
    assert proc.returncode == 0 and proc.stderr == f"note: `rlhf {old}` is now `rlhf {new}`\n"
    assert f" {new} [OPTIONS]" in proc.stdout  # the usage line of the command at its new place
