"""The feedback data model and its loaders: real HH-RLHF lines, TRL formats, K-wise rankings, bad input."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlhf.data.comparisons import (Ranking, from_hh, load_rankings, pair, parse_hh_transcript, parse_row,
                                   write_rankings, write_trl_pairs)
from rlhf.errors import RLHFError

HH = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh-harmless" / "train.jsonl"
needs_hh = pytest.mark.skipif(not HH.is_file(), reason=f"shared HH data not found at {HH}")


def _hh_lines(n: int | None = None) -> list[dict]:
    with open(HH, encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    return rows[:n] if n else rows


def _write(tmp_path: Path, rows: list, name: str = "data.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


# ---------------------------------------------------------------- the data model

def test_pairs_and_ties_of_a_kwise_ranking():
    r = Ranking(({"role": "user", "content": "q"},), ("a", "b", "c", "d"), (2, 1, 2, 3))
    assert r.k == 4
    assert sorted(r.pairs()) == sorted([(1, 0), (0, 3), (1, 2), (1, 3), (2, 3)])
    assert r.ties() == [(0, 2)]
    assert len(r.pairs()) + len(r.ties()) == 6  # C(4, 2)
    assert r.to_trl_pairs()[0] == {"prompt": "q", "chosen": "b", "rejected": "a"}


def test_ranking_rejects_bad_shapes():
    with pytest.raises(ValueError, match="at least 2"):
        Ranking(({"role": "user", "content": "q"},), ("a",), (1,))
    with pytest.raises(ValueError, match="3 ranks for 2"):
        Ranking(({"role": "user", "content": "q"},), ("a", "b"), (1, 2, 3))
    with pytest.raises(ValueError, match="empty response"):
        Ranking(({"role": "user", "content": "q"},), ("a", "  "), (1, 2))


# ---------------------------------------------------------------- Anthropic HH-RLHF, real lines

@needs_hh
def test_hh_parser_on_real_first_line():
    row = _hh_lines(1)[0]
    turns = parse_hh_transcript(row["chosen"])
    assert [m["role"] for m in turns] == ["user", "assistant", "user", "assistant", "user", "assistant"]
    assert turns[0]["content"] == "Who plays the part of Sasha on General Hospital"
    assert turns[1]["content"] == "I don’t have that information, and I’m not going to look it up"
    assert turns[4]["content"] == "My want is Sasha"
    assert all(m["content"] == m["content"].strip() for m in turns)

    r = from_hh(row["chosen"], row["rejected"])
    assert r.prompt == tuple(turns[:-1])  # the shared prefix of turns is the prompt, ending with the user
    assert r.prompt[-1] == {"role": "user", "content": "My want is Sasha"}
    assert r.responses[0].startswith("That’s OK.  I can take some guesses at your concerns.")
    assert r.responses[1] == "I can look up who plays that character.  I hope you’ll find this helpful."
    assert r.ranks == (1, 2) and r.pairs() == [(0, 1)]


@needs_hh
def test_hh_parser_on_real_lines_roundtrips_the_transcripts():
    """On 200 real lines: every kept ranking rebuilds the original chosen/rejected transcripts exactly
    (up to whitespace around turns), so no turn is lost or merged."""
    def render(prompt, response):
        return "".join(f"\n\n{'Human' if m['role'] == 'user' else 'Assistant'}: {m['content']}" for m in prompt) \
            + f"\n\nAssistant: {response}"

    def norm(text):
        return [(s, c.strip())
                for s, c in zip(*[iter(__import__('re').split(r"\n\n(Human|Assistant):", text)[1:])] * 2)]

    checked = 0
    for row in _hh_lines(200):
        try:
            r = parse_row(row)
        except ValueError:
            continue
        assert r.prompt[-1]["role"] == "user"
        assert norm(render(r.prompt, r.responses[0])) == norm(row["chosen"])
        assert norm(render(r.prompt, r.responses[1])) == norm(row["rejected"])
        checked += 1
    assert checked >= 195


@needs_hh
def test_load_real_hh_file_counts_skips_by_reason():
    rankings, report = load_rankings(HH, on_bad="skip")
    assert len(rankings) == report.kept and report.kept > 1700
    assert report.kept + sum(report.skipped.values()) == len(_hh_lines())
    # the file really holds a few empty responses (line 215: an empty chosen answer)
    assert report.skipped["empty response"] >= 1
    assert report.examples["empty response"] == 215
    with pytest.raises(RLHFError, match=r"train\.jsonl:215: empty response"):
        load_rankings(HH, on_bad="error")


def test_hh_multi_turn_synthetic():
    c = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how are you?\n\nAssistant: fine, thanks"
    j = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how are you?\n\nAssistant: go away"
    r = parse_row({"chosen": c, "rejected": j})
    assert [m["content"] for m in r.prompt] == ["hi", "hello", "how are you?"]
    assert r.responses == ("fine, thanks", "go away")


# ---------------------------------------------------------------- conventional TRL formats and K-wise

def test_trl_explicit_prompt_pairs(tmp_path):
    path = _write(tmp_path, [{"prompt": "What is 2+2?", "chosen": "4", "rejected": "5", "id": 7}])
    (r,), report = load_rankings(path)
    assert r.prompt == ({"role": "user", "content": "What is 2+2?"},)
    assert r.responses == ("4", "5") and r.ranks == (1, 2) and r.id == "7"
    assert report.kept == 1 and not report.skipped


def test_trl_conversational_explicit_and_implicit_prompt(tmp_path):
    prompt = [{"role": "system", "content": "be nice"}, {"role": "user", "content": "hi"}]
    explicit = {"prompt": prompt, "chosen": [{"role": "assistant", "content": "hello!"}],
                "rejected": [{"role": "assistant", "content": "what"}]}
    implicit = {"chosen": prompt + [{"role": "assistant", "content": "hello!"}],
                "rejected": prompt + [{"role": "assistant", "content": "what"}]}
    (a, b), _ = load_rankings(_write(tmp_path, [explicit, implicit]))
    for r in (a, b):
        assert r.prompt == tuple(prompt)
        assert r.responses == ("hello!", "what")
        assert r.pairs() == [(0, 1)]


def test_kwise_rankings_with_ties_and_roundtrip(tmp_path):
    row = {"prompt": "pick", "responses": ["a", "b", "c"], "ranks": [2, 1, 2], "id": "x", "meta": {"labeler": 3}}
    (r,), _ = load_rankings(_write(tmp_path, [row]))
    assert r.ranks == (2, 1, 2) and r.ties() == [(0, 2)] and r.meta == {"labeler": 3}
    write_rankings(tmp_path / "out.jsonl", [r, pair("q", "yes", "no")])
    back, _ = load_rankings(tmp_path / "out.jsonl")
    assert back == [r, pair("q", "yes", "no")]
    assert write_trl_pairs(tmp_path / "trl.jsonl", [r]) == 2  # the tie is not a pair


# ---------------------------------------------------------------- bad input: error names file:line, or counted skip

GOOD = {"prompt": "q", "chosen": "a", "rejected": "b"}
BAD = {
    "chosen and rejected are identical": {"prompt": "q", "chosen": "same", "rejected": "same "},
    "empty response": {"prompt": "q", "chosen": "   ", "rejected": "b"},
    "'ranks' names 2 responses but there are 3": {"prompt": "q", "responses": ["a", "b", "c"], "ranks": [1, 2]},
    "no 'prompt' field and the transcript has no Assistant turn": {"chosen": "\n\nHuman: hi there",
                                                                   "rejected": "\n\nHuman: hi again"},
    "missing field 'rejected'": {"prompt": "q", "chosen": "a"},
    "duplicate responses in one ranking": {"prompt": "q", "responses": ["a", "a"], "ranks": [1, 2]},
    "the prompt must end with a user turn": {"chosen": "\n\nHuman: a\n\nAssistant: b\n\nAssistant: c",
                                              "rejected": "\n\nHuman: a\n\nAssistant: b\n\nAssistant: d"},
}


@pytest.mark.parametrize("reason", list(BAD))
def test_bad_line_is_an_error_naming_file_and_line(tmp_path, reason):
    path = _write(tmp_path, [GOOD, GOOD, BAD[reason], GOOD])
    with pytest.raises(RLHFError) as err:
        load_rankings(path, on_bad="error")
    assert str(err.value).startswith(f"{path}:3: ")
    assert reason in str(err.value)


@pytest.mark.parametrize("reason", list(BAD))
def test_bad_line_is_a_counted_skip(tmp_path, reason):
    path = _write(tmp_path, [GOOD, BAD[reason], GOOD, BAD[reason]])
    rankings, report = load_rankings(path, on_bad="skip")
    assert len(rankings) == report.kept == 2
    assert dict(report.skipped) == {reason: 2}
    assert report.as_dict()["first_line_per_reason"] == {reason: 2}


def test_all_bad_reasons_counted_together(tmp_path):
    path = _write(tmp_path, [GOOD] + list(BAD.values()))
    _, report = load_rankings(path, on_bad="skip")
    assert report.kept == 1 and sum(report.skipped.values()) == len(BAD) and set(report.skipped) == set(BAD)


def test_malformed_json_empty_file_and_bad_option(tmp_path):
    path = _write(tmp_path, [GOOD, "{not json"])
    with pytest.raises(RLHFError, match=r"data\.jsonl:2: malformed JSON"):
        load_rankings(path, on_bad="skip")
    with pytest.raises(RLHFError, match="no usable comparisons"):
        load_rankings(_write(tmp_path, [BAD["empty response"]], "bad.jsonl"), on_bad="skip")
    with pytest.raises(RLHFError, match="data file not found"):
        load_rankings(tmp_path / "missing.jsonl")
    with pytest.raises(RLHFError, match="on_bad"):
        load_rankings(path, on_bad="ignore")
