"""Preference-based RL side by side: `rlhf control` vs the `imitation` library's preference-comparisons trainer.

Same environment (fixed-length CartPole: seals/CartPole-v0 for the peer, our FixedLength CartPole, both 500 steps and
reward 1 while the pole is up; Pendulum-v1, 200 steps), the same label budget, the same agent timesteps, the same
seeds, a synthetic teacher from the true reward on both sides, SB3 PPO on both sides, one torch thread each, run one
after the other in this process's session. Each side also trains PPO on the true reward with its own settings, and
both are scored on the true reward (deterministic policy, 10 episodes).

    python bench/bench_pbrl.py                            # CartPole and Pendulum, seeds 0 1 2, 1,000 labels
    python bench/bench_pbrl.py --envs CartPole --seeds 0 --labels 200
    python bench/bench_pbrl.py --ours Pendulum=runs/control-pendulum   # reuse a finished 3-seed run for our side

The peer runs in its own virtual environment (imitation 1.0.1 pins gymnasium 0.29 and SB3 2.2):
    bash ../shared/bench/peers/setup.sh .peers imitation
Writes runs/bench-pbrl/results.json and prints a table of per-seed returns, the ratio of returns at equal labels
(ours / peer; for Pendulum, whose returns are negative, the ratio of normalized scores), the ratio of returns above
one random-action baseline (ours), and of PbRL wall time; then their mean and range per environment.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from peer_env import peer_env, require_peers  # bench/ is on sys.path when a script here runs

ROOT = Path(__file__).resolve().parents[1]
SHARED = next((p for p in (ROOT.parent / "shared", ROOT.parent.parent / "shared") if p.is_dir()),
              ROOT.parent / "shared")
PEER_PY = ROOT / ".peers" / "imitation" / "bin" / "python"
PEER = SHARED / "bench" / "peers" / "peer_imitation_pbrl.py"
SIDES = {  # our config, the peer's env id
    "CartPole": ("configs/control_cartpole.yaml", "seals:seals/CartPole-v0"),
    "Pendulum": ("configs/control_pendulum.yaml", "Pendulum-v1"),
}


def peer(env: str, labels: int, seed: int, timesteps: int, threads: int, iters: int) -> dict:
    proc = subprocess.run([str(PEER_PY), str(PEER), SIDES[env][1], str(labels), str(seed), str(timesteps)],
                          capture_output=True, text=True, env=peer_env(threads, ITERS=str(iters)), cwd=ROOT)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("PEER_JSON ")]
    if proc.returncode or not lines:
        sys.exit(f"peer failed on {env} seed {seed}:\n{proc.stderr[-2000:]}")
    return json.loads(lines[-1][len("PEER_JSON "):])


def ours(env: str, labels: int, seed: int, threads: int, out: Path, done: dict[str, Path], sets: list[str]) -> dict:
    if env in done:  # a finished `rlhf control` run with this seed
        rows = json.loads((done[env] / "summary.json").read_text())["per_seed"]
        (row,) = [r for r in rows if r["seed"] == seed]
        return {k: v for k, v in row.items() if k not in ("curve", "ref_curve")}
    run = out / f"ours-{env}-seed{seed}"
    proc = subprocess.run([sys.executable, "-m", "rlhf.cli", "control", "-q", "-c", SIDES[env][0], "-o", str(run),
                           "--set", f"seeds=[{seed}]", "--set", f"labels={labels}", "--set", f"threads={threads}",
                           *[x for kv in sets for x in ("--set", kv)]],
                          capture_output=True, text=True, env=peer_env(threads), cwd=ROOT)
    if proc.returncode:
        sys.exit(f"rlhf control failed on {env} seed {seed}:\n{proc.stderr[-2000:]}")
    (row,) = json.loads((run / "summary.json").read_text())["per_seed"]
    return {k: v for k, v in row.items() if k not in ("curve", "ref_curve")}


def row(env: str, seed: int, o: dict, p: dict) -> dict:
    neg = env == "Pendulum"  # negative returns: compare normalized scores
    den = p["norm"] if neg else p["pbrl_return"]
    return {"env": env, "seed": seed, "labels_ours": o["labels"], "labels_peer": p["comparisons"],
            "timesteps_ours": o["timesteps"], "timesteps_peer": p["timesteps"],
            "ours_pbrl": round(o["pbrl_return"], 1), "ours_ppo_true": round(o["true_reward_return"], 1),
            "ours_norm": round(o["normalized"], 3), "peer_pbrl": p["pbrl_return"],
            "peer_ppo_true": p["ppo_return"], "peer_norm": p["norm"],
            "return_ratio": round((o["normalized"] if neg else o["pbrl_return"]) / den, 3) if den else None,
            # one baseline for both sides (our random-action return): how far above random each PbRL agent got
            "random": round(o["random_return"], 1),
            "above_random_ratio": round((o["pbrl_return"] - o["random_return"])
                                        / (p["pbrl_return"] - o["random_return"]), 3)
            if p["pbrl_return"] != o["random_return"] else None,
            "ours_wall_s": o["pbrl_wall_s"], "peer_wall_s": p["pbrl_wall_s"],
            "wall_ratio": round(o["pbrl_wall_s"] / p["pbrl_wall_s"], 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--envs", nargs="+", default=list(SIDES), choices=list(SIDES))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--labels", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench-pbrl"))
    ap.add_argument("--ours", nargs="*", default=[], metavar="ENV=RUNDIR",
                    help="take our side from a finished `rlhf control` run instead of running it again")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="override our config (the peer gets our agent timesteps); e.g. for a quick smoke run")
    ap.add_argument("--iters", type=int, default=10, help="the peer's preference iterations (its ITERS)")
    ap.add_argument("--jobs", type=int, default=1,
                    help="(env, seed) pairs run at once, each ours then the peer's (give each job a core)")
    ap.add_argument("--table", metavar="RESULTS_JSON",
                    help="print the tables of a finished run's results.json and exit")
    args = ap.parse_args()
    if args.table:
        report(json.loads(Path(args.table).read_text()))
        return
    require_peers(str(PEER_PY), str(PEER))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    done = {k: Path(v) for k, v in (item.split("=", 1) for item in args.ours)}
    tasks = [(env, seed) for env in args.envs for seed in args.seeds]

    def one(task: tuple[str, int]) -> dict:
        env, seed = task
        o = ours(env, args.labels, seed, args.threads, out, done, args.sets)
        p = peer(env, args.labels, seed, o["timesteps"], args.threads, args.iters)
        return row(env, seed, o, p)

    rows = []
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:  # each job is two subprocesses, one after the other
        for r in pool.map(one, tasks):
            rows.append(r)
            print(json.dumps(r), flush=True)
            (out / "results.json").write_text(json.dumps(rows, indent=2))
    report(rows)


def report(rows: list[dict]) -> None:
    """Per-seed rows, then per environment: mean PbRL return of each side, the ratio of those means, and the
    mean (min-max) of the per-seed return, above-random and wall ratios."""
    cols = list(rows[0])
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")
    print("\n| env | seeds | ours PbRL return (mean) | peer PbRL return (mean) | ratio of means "
          "| return ratio ours / peer "
          "| above-random ratio ours / peer | wall ratio ours / peer |\n|---|---|---|---|---|---|---|---|")

    def fmt(v):  # mean (min-max)
        return f"{statistics.fmean(v):.3f} ({min(v):.3f}-{max(v):.3f})" if v else "-"

    for env in dict.fromkeys(r["env"] for r in rows):
        sel = [r for r in rows if r["env"] == env]
        mo, mp = statistics.fmean(r["ours_pbrl"] for r in sel), statistics.fmean(r["peer_pbrl"] for r in sel)
        rr = [r["return_ratio"] for r in sel if r["return_ratio"] is not None]
        ar = [r["above_random_ratio"] for r in sel if r["above_random_ratio"] is not None]
        print(f"| {env} | {len(sel)} | {mo:.1f} | {mp:.1f} | {mo / mp:.3f} | {fmt(rr)} | {fmt(ar)} "
              f"| {fmt([r['wall_ratio'] for r in sel])} |")

if __name__ == "__main__":
    main()
