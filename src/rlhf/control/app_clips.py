"""People as the teacher: clip pairs out to the labeling app, their answers back to the control reward model.

An import/export pair (people answer at their own pace), and `PeopleTeacher`, the live teacher inside
`rlhf control` (`people.db`): each round's pairs go to the app and the loop waits for the answers.

    rlhf control clips make Pendulum clips/ --pairs 50 --gold 5   # episodes, clips as GIFs, tasks.jsonl, pairs.npz
    rlhf label create-project pend --media-root clips/ && rlhf label import --project pend clips/tasks.jsonl \
        --gold clips/gold.jsonl                                   # (or --db/--project on `make` does both)
    ... people answer in the app: left / right / equal / can't tell ...
    rlhf label export --project pend --out answers.jsonl
    rlhf control clips fit clips/ answers.jsonl                   # the reward-model ensemble fit on their answers

`make` collects episodes of uniform random actions (the untrained agent's view of the task), cuts clip pairs as
`rlhf control` does, writes each clip as its own GIF (classic control redrawn from the stored observations by
render.py; Highway recorded as it drives), and saves the reward-model features and true rewards of every pair in
pairs.npz. Each task is a "clip" pair whose responses are [clip a, clip b]; the app's export keeps that order, so
ranks [1, 2] mean a is better, [2, 1] b, [1, 1] equal (0.5); "can't tell" is a skip and never reaches the export.
Gold pairs (optional) are pairs whose true returns differ most, ranked by the true reward.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rlhf.control.clips import TrajectoryBuffer
from rlhf.control.envs import action_features, make_env, resolve
from rlhf.errors import RLHFError

PROMPT = "{env}: which clip is better?"


def _episodes(env: str, n: int, episode_len: int, seed: int, frames: bool):
    """n episodes of uniform random actions: (features, rewards, observations, frames or None) each."""
    e = make_env(env, episode_len, render=frames)
    e.action_space.seed(seed)
    out = []
    for i in range(n):
        obs, _ = e.reset(seed=seed + i)
        feats, rewards, observations, pictures = [], [], [], []
        done = False
        while not done:
            action = e.action_space.sample()
            if frames:
                pictures.append(e.render())
            observations.append(np.asarray(obs, np.float32).reshape(-1))
            feats.append(np.concatenate([observations[-1], action_features(e.action_space, np.array([action]))[0]]))
            obs, _, term, trunc, info = e.step(action)
            rewards.append(info["true_reward"])
            done = term or trunc
        out.append((np.stack(feats), np.asarray(rewards), np.stack(observations),
                    np.stack(pictures) if frames else None))
    e.close()
    return out


def _write_clip(frames: np.ndarray, path: Path, fps: int) -> None:
    import imageio.v2 as imageio

    imageio.mimsave(path, list(frames), duration=1000 / fps, loop=0)


def make_pairs(env: str, out: str | Path, pairs: int, clip_len: int = 25, episodes: int = 8, gold: int = 0,
               episode_len: int = 0, seed: int = 0, fps: int = 15) -> dict:
    """Write clips/*.gif, tasks.jsonl (and gold.jsonl), pairs.npz under `out`; returns counts and paths."""
    from rlhf.control.render import render_clip
    from rlhf.data.jsonl import write_jsonl

    name, _ = resolve(env)
    if pairs < 1:
        raise RLHFError(f"--pairs: need at least 1 clip pair, got {pairs}")
    if gold < 0 or episodes < 1:
        raise RLHFError(f"--gold must be >= 0 and --episodes >= 1, got {gold} and {episodes}")
    out = Path(out)
    (out / "clips").mkdir(parents=True, exist_ok=True)
    live = name == "Highway"  # no state to restore: record frames while driving
    eps = _episodes(name, episodes, episode_len, seed, frames=live)
    buffer = TrajectoryBuffer(episodes)
    for feats, rewards, *_ in eps:
        buffer.add(feats, rewards)
    rng = np.random.default_rng(seed)
    chosen = buffer.sample_pairs(pairs + gold, clip_len, rng)  # checks clip_len against the episode length
    if gold:  # gold: the pairs whose true returns differ most
        diff = [abs(buffer.clip(p.episode_a, p.start_a, clip_len).rewards.sum()
                    - buffer.clip(p.episode_b, p.start_b, clip_len).rewards.sum()) for p in chosen]
        order = np.argsort(-np.asarray(diff), kind="stable")
        gold_pairs, chosen = [chosen[i] for i in order[:gold]], [chosen[i] for i in sorted(order[gold:])]
    else:
        gold_pairs = []
    rows, gold_rows, keep = [], [], {"id": [], "xa": [], "xb": [], "ra": [], "rb": []}
    for i, p in enumerate(chosen + gold_pairs):
        is_gold = i >= len(chosen)
        pid = f"{'g' if is_gold else 'p'}{i:04d}"
        refs = []
        for side, (ep, start) in (("a", (p.episode_a, p.start_a)), ("b", (p.episode_b, p.start_b))):
            clip = slice(start, start + clip_len)
            frames = eps[ep][3][clip] if live else render_clip(name, eps[ep][2][clip])
            ref = f"clips/{pid}-{side}.gif"
            _write_clip(frames, out / ref, fps)
            refs.append(ref)
        ra = eps[p.episode_a][1][p.start_a:p.start_a + clip_len]
        rb = eps[p.episode_b][1][p.start_b:p.start_b + clip_len]
        row = {"id": pid, "kind": "clip", "prompt": PROMPT.format(env=name), "responses": refs}
        if is_gold:
            gold_rows.append({**row, "ranks": [1, 2] if ra.sum() >= rb.sum() else [2, 1]})
            continue
        rows.append(row)
        keep["id"].append(pid)
        keep["xa"].append(eps[p.episode_a][0][p.start_a:p.start_a + clip_len])
        keep["xb"].append(eps[p.episode_b][0][p.start_b:p.start_b + clip_len])
        keep["ra"].append(ra)
        keep["rb"].append(rb)
    write_jsonl(out / "tasks.jsonl", rows)
    if gold_rows:
        write_jsonl(out / "gold.jsonl", gold_rows)
    np.savez(out / "pairs.npz", env=name, **{k: np.asarray(v) for k, v in keep.items()})
    return {"pairs": len(rows), "gold": len(gold_rows), "tasks": out / "tasks.jsonl",
            "gold_file": out / "gold.jsonl" if gold_rows else None}


def read_answers(pairs_dir: str | Path, export: str | Path) -> dict:
    """The app's exported rankings matched to pairs.npz: clips (xa, xb), labels y (1 a, 0 b, 0.5 equal), and
    how often the people agreed with the true reward on the pairs they decided."""
    from rlhf.data.comparisons import load_rankings

    path = Path(pairs_dir) / "pairs.npz"
    if not path.is_file():
        raise RLHFError(f"{path}: not found (write it with `rlhf control clips make`)")
    data = np.load(path)
    index = {str(pid): i for i, pid in enumerate(data["id"])}
    rankings, _ = load_rankings(export)
    take, y = [], []
    for r in rankings:
        if r.id not in index:
            raise RLHFError(f"{export}: pair id {r.id!r} is not in {path}")
        ranks = list(r.ranks)
        if len(ranks) != 2:
            raise RLHFError(f"{export}: row {r.id!r} has {len(ranks)} responses; a clip pair has 2")
        take.append(index[r.id])
        y.append(0.5 if ranks[0] == ranks[1] else (1.0 if ranks[0] < ranks[1] else 0.0))
    y = np.asarray(y, np.float32)
    ra, rb = data["ra"][take].sum(1), data["rb"][take].sum(1)
    decided = (y != 0.5) & (ra != rb)
    agree = float(((ra > rb)[decided] == (y[decided] == 1.0)).mean()) if decided.any() else float("nan")
    return {"env": str(data["env"]), "xa": data["xa"][take], "xb": data["xb"][take], "y": y,
            "ids": [str(data["id"][i]) for i in take], "true_agreement": agree}


def fit_answers(pairs_dir: str | Path, export: str | Path, seed: int = 0, config=None) -> dict:
    """Fit the control reward-model ensemble on the people's answers (reward_model.py, unchanged)."""
    from rlhf.control.envs import action_dim
    from rlhf.control.reward_model import RewardEnsemble, RewardModelConfig

    got = read_answers(pairs_dir, export)
    space = make_env(got["env"]).action_space
    feats = got["xa"].shape[-1]
    ensemble = RewardEnsemble(feats - action_dim(space), action_dim(space), config or RewardModelConfig(), seed)
    ensemble.set_input_stats(np.concatenate([got["xa"], got["xb"]]).reshape(-1, feats))
    stats = ensemble.fit(got["xa"], got["xb"], got["y"])
    return {"env": got["env"], "labels": len(got["y"]), "equal": int((got["y"] == 0.5).sum()),
            "people_vs_true_reward": got["true_agreement"], **stats, "ensemble": ensemble}


# ---------------------------------------------------------------- people as a live teacher inside `rlhf control`


@dataclass
class PeopleConfig:
    """`rlhf control` asks people instead of the simulated teacher when `db` is set: each labeling round's clip
    pairs are rendered to GIFs, imported into the labeling app's `project` (created on first use, media root
    `media`), and the loop waits until every pair has `overlap` answers or `timeout_s` has passed (pairs still
    unanswered then count as skipped). The annotators use the app as for any clip project (left / right / equal
    / can't tell); several annotators of a pair are combined by the export's consensus."""
    db: str = ""  # labeling database (a SQLite file or a PostgreSQL URL); empty: the simulated teacher
    project: str = "control"
    media: str = ""  # folder for the GIFs and task files; empty: <run dir>/people
    overlap: int = 1
    timeout_s: float = 3600.0
    poll_s: float = 2.0
    fps: int = 15

    def check(self, env: str) -> None:
        if not self.db:
            return
        from rlhf.feedback.app.projects import check_project_name

        check_project_name(self.project)
        from rlhf.control.render import REDRAWN

        name = resolve(env)[0]
        if name not in REDRAWN:
            raise RLHFError(f"people.db: live clips are redrawn from observations, which {name} cannot do "
                            f"(it can for {', '.join(REDRAWN)})" + ("; use `rlhf control clips make Highway` for "
                                                                   "people on Highway" if name == "Highway" else ""))
        if self.overlap < 1 or self.timeout_s <= 0 or self.poll_s <= 0 or self.fps < 1:
            raise RLHFError("people.overlap and people.fps must be >= 1, people.timeout_s and people.poll_s > 0")


class PeopleTeacher:
    """The labeling app's annotators as `rlhf control`'s teacher (the SimulatedTeacher's interface: compare_all,
    asked / skipped / equal)."""

    def __init__(self, config: PeopleConfig, env: str, obs_dim: int, media: Path, tag: str, say=print):
        """`obs_dim`: the observation's share of a clip's reward-model features (observation, then action)."""
        from rlhf.feedback.app.db import open_database
        from rlhf.feedback.app.projects import create_project
        from rlhf.feedback.app.models import Project
        from sqlalchemy import select

        self.config, self.env, self.obs_dim, self.tag, self.say = config, resolve(env)[0], obs_dim, tag, say
        self.media = Path(config.media) if config.media else media
        (self.media / "clips").mkdir(parents=True, exist_ok=True)
        self.sessions = open_database(config.db)
        with self.sessions() as db:
            if db.scalar(select(Project).where(Project.name == config.project)) is None:
                create_project(db, config.project, overlap=config.overlap, media_root=str(self.media))
        self.asked = self.skipped = self.equal = self.rounds = 0

    def compare_all(self, clips: list) -> list:
        """[(clip a, clip b)] -> answers (1.0 a better, 0.0 b, 0.5 equal, SKIP), once people have answered."""
        from rlhf.control.render import render_clip
        from rlhf.control.teachers import SKIP
        from rlhf.data.jsonl import write_jsonl
        from rlhf.feedback.app.importer import import_tasks

        self.rounds += 1
        ids, rows = [], []
        for i, (a, b) in enumerate(clips):
            pid = f"{self.tag}-r{self.rounds:02d}-{i:04d}"
            refs = []
            for side, clip in (("a", a), ("b", b)):
                ref = f"clips/{pid}-{side}.gif"
                _write_clip(render_clip(self.env, clip.features[:, :self.obs_dim]), self.media / ref, self.config.fps)
                refs.append(ref)
            ids.append(pid)
            rows.append({"id": pid, "kind": "clip", "prompt": PROMPT.format(env=self.env), "responses": refs})
        tasks = self.media / f"tasks-{self.tag}-r{self.rounds:02d}.jsonl"
        write_jsonl(tasks, rows)
        with self.sessions() as db:
            import_tasks(db, self.config.project, tasks)
        self.say(f"waiting for people: {len(ids)} clip pairs in project {self.config.project!r} "
                 f"({self.config.overlap} answer(s) each, at most {self.config.timeout_s:.0f} s)")
        answers = self._wait(ids)
        out = []
        for pid in ids:
            ranks = answers.get(pid)
            self.asked += 1
            if ranks is None:
                self.skipped += 1
                out.append(SKIP)
            elif ranks[0] == ranks[1]:
                self.equal += 1
                out.append(0.5)
            else:
                out.append(1.0 if ranks[0] < ranks[1] else 0.0)
        return out

    def _wait(self, ids: list[str]) -> dict[str, list[int]]:
        """Poll the database until every pair has `overlap` answers (skips count) or the timeout; then each
        pair's consensus ranks over its non-skipped answers (pairs only skipped, or unanswered: absent)."""
        from rlhf.feedback.app.export import consensus
        from rlhf.feedback.app.models import Project
        from rlhf.feedback.app.quality import project_labels
        from sqlalchemy import select

        wanted, deadline = set(ids), time.monotonic() + self.config.timeout_s
        while True:
            with self.sessions() as db:
                project = db.scalar(select(Project).where(Project.name == self.config.project))
                got: dict[str, list] = {}
                for task, _, label in project_labels(db, project):
                    if task.external_id in wanted:
                        got.setdefault(task.external_id, []).append(None if label.skipped else label.ranks)
            if all(len(got.get(pid, [])) >= self.config.overlap for pid in ids) or time.monotonic() >= deadline:
                break
            time.sleep(self.config.poll_s)
        return {pid: consensus([r for r in got[pid] if r is not None]) for pid in ids
                if any(r is not None for r in got.get(pid, []))}

    def stats(self) -> dict:
        return {"asked": self.asked, "skipped": self.skipped, "equal": self.equal}
