"""The World: one seed -> knowledge base, pretraining corpus, demonstrations, prompt sets, gold reward.

Entities are split in two. Group A's facts appear in the corpus both as encyclopedia text and as
question-answer dialogues, and A is what demonstrations and RL prompts ask about. Group B's facts appear
only as encyclopedia text; evaluation asks about B, so a correct answer means the model extracted
knowledge it learned in pretraining. Unknown entities are split the same way (train / eval).
"""
from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rlhf.data.jsonl import write_jsonl
from rlhf.world import templates as T
from rlhf.world.gold import GoldScore, format_compliant, score
from rlhf.world.knowledge import ATTRIBUTES, KnowledgeBase, build_kb


@dataclass
class DemonstratorConfig:
    """How the simulated demonstrator who writes SFT data falls short (probabilities)."""
    fabricate_unknown: float = 0.7  # answers questions about unknown entities confidently
    comply_harmful: float = 0.25  # goes along with harmful requests
    format_slip: float = 0.2  # ignores the format constraint
    verbose: float = 0.25  # adds a needless filler sentence
    wrong_answer: float = 0.05  # states a wrong fact or sum


@dataclass
class WorldConfig:
    seed: int = 0
    n_people: int = 30
    n_places: int = 18
    n_things: int = 12
    n_unknown: int = 80
    qa_fraction: float = 0.5  # share of entities whose Q&A appears in pretraining (group A)
    corpus_repeats: int = 12  # paraphrased passes over every fact in the corpus
    n_demonstrations: int = 2000
    multi_turn_fraction: float = 0.1
    n_train_prompts: int = 1200
    n_eval_prompts: int = 300
    demonstrator: DemonstratorConfig = field(default_factory=DemonstratorConfig)


KIND_MIX = {"known_fact": 0.3, "unknown_entity": 0.2, "arithmetic": 0.15, "harmful": 0.15, "format": 0.2}


class World:
    def __init__(self, config: WorldConfig | None = None):
        self.config = config = config or WorldConfig()
        rng = random.Random(config.seed)
        self.kb: KnowledgeBase = build_kb(rng, config.n_people, config.n_places, config.n_things, config.n_unknown)
        ents = list(self.kb.entities)
        rng.shuffle(ents)
        n_a = round(len(ents) * config.qa_fraction)
        self.group_a, self.group_b = ents[:n_a], ents[n_a:]
        half = len(self.kb.unknown) // 2
        self.unknown_train, self.unknown_eval = self.kb.unknown[:half], self.kb.unknown[half:]
        arith = ([T.ARITH_Q.format(a=a, op="plus", b=b) for a in range(10) for b in range(10)]
                 + [T.ARITH_Q.format(a=a, op="minus", b=b) for a in range(10) for b in range(a + 1)]
                 + [T.COUNT_Q.format(w=w) for w in T.COUNT_WORDS])
        rng.shuffle(arith)
        cut = int(len(arith) * 0.7)
        self.arith_train, self.arith_eval = arith[:cut], arith[cut:]
        self._seed = config.seed

    # ---- gold reward ----
    def score(self, prompt: str | list, response: str) -> GoldScore:
        return score(self.kb, prompt, response)

    # ---- questions and answers ----
    def _fact_qa(self, rng: random.Random, entity, attr: str | None = None) -> tuple[str, str, str]:
        attr = attr or rng.choice([a for a, _ in entity.attrs])
        q = T.fill(rng.choice(T.QUESTIONS[attr]), entity.name)
        return q, T.fill(T.ANSWERS[attr], entity.name, entity.get(attr)), attr

    def _prompt(self, rng: random.Random, kind: str, split: str) -> str:
        ents = self.group_a if split == "train" else self.group_b
        if kind == "known_fact":
            return self._fact_qa(rng, rng.choice(ents))[0]
        if kind == "unknown_entity":
            e = rng.choice(self.unknown_train if split == "train" else self.unknown_eval)
            attr = rng.choice([a for a, k in ATTRIBUTES.items() if k == e.kind])
            return T.fill(rng.choice(T.QUESTIONS[attr]), e.name)
        if kind == "arithmetic":
            return rng.choice(self.arith_train if split == "train" else self.arith_eval)
        if kind == "harmful":
            person = rng.choice([e.name for e in ents if e.kind == "person"])
            target = rng.choice(T.HARM_TARGETS).format(person=person)
            return rng.choice(T.HARM_Q).format(verb=rng.choice(T.HARM_VERBS), target=target)
        constraint = rng.choice(["one_word", "max_words", "list"])
        if constraint == "list":
            return T.LIST_Q.format(k=T.NUMBER_WORDS[rng.choice([2, 3, 4])], cat=rng.choice(list(T.LIST_CATEGORIES)))
        q = self._fact_qa(rng, rng.choice(ents))[0]
        if constraint == "one_word":
            return T.ONE_WORD_Q.format(q=q)
        return T.MAX_WORDS_Q.format(m=rng.choice([3, 4, 5]), q=q)

    def prompts(self, split: str, n: int | None = None) -> list[dict]:
        """Training ('train'), held-out test ('eval') or validation ('valid') prompts: [{"prompt", "kind"}],
        kinds mixed per KIND_MIX. Validation prompts come from the held-out pools as the test prompts do (group B,
        the held-out unknown entities and sums), never equal to a test prompt: a run may choose settings on them
        without reading the test set."""
        if split not in ("train", "eval", "valid"):
            raise ValueError(f"split: expected train, eval or valid, got {split!r}")
        n = n if n is not None else self.config.n_train_prompts if split == "train" else self.config.n_eval_prompts
        rng = random.Random(f"{self._seed}-prompts-{split}")
        test = {p["prompt"] for p in self.prompts("eval")} if split == "valid" else set()
        rows = []
        for kind, share in KIND_MIX.items():
            want, got = round(n * share), 0
            for _ in range(50 * want):  # the pools are finite: give up on a kind after 50 draws per prompt
                if got == want:
                    break
                prompt = self._prompt(rng, kind, split)
                if prompt not in test:
                    rows.append({"prompt": prompt, "kind": kind})
                    got += 1
        rng.shuffle(rows)
        return rows

    def demonstrate(self, rng: random.Random, prompt: str) -> str:
        """The simulated demonstrator's answer, flaws included."""
        return self.demonstrate_with_lapses(rng, prompt)[0]

    def demonstrate_with_lapses(self, rng: random.Random, prompt: str) -> tuple[str, set[str]]:
        """(answer, the flaws the demonstrator drew: comply, fabricate, wrong, format_slip, verbose). Its
        phrasings are the templates the gold reward reads, and it checks a format with the gold reward's own
        test, so the gold reward judges each lapse as one (tests/test_world.py checks every demonstration)."""
        d = self.config.demonstrator
        q = T.parse_question(prompt)
        if q["kind"] == "harmful":
            if rng.random() < d.comply_harmful:
                return T.COMPLY, {"comply"}
            return rng.choice(T.REFUSAL), set()
        lapses: set[str] = set()
        if q["kind"] == "arithmetic":
            wrong = rng.random() < d.wrong_answer
            x = q["answer"] + (rng.choice([-1, 1]) if wrong else 0)
            answer, lapses = T.NUMBER_ANSWER.format(x=x), {"wrong"} if wrong else set()
        elif q["kind"] == "format" and q["constraint"] == "list":
            values = rng.sample(self.kb.domain(q["attr"]), q["k"])
            if rng.random() < d.format_slip:
                return ", ".join(values[:-1]) + " and " + values[-1] + ".", {"format_slip"}
            return "\n".join(f"- {v}" for v in values), set()
        else:
            inner = q if q["kind"] == "fact" else q["inner"]
            entity = self.kb.by_name().get(inner["name"].lower())
            attr = inner["attr"]
            if entity is None:
                if rng.random() >= d.fabricate_unknown:
                    return rng.choice(T.ABSTAIN), set()
                value, lapses = rng.choice(self.kb.domain(attr)), {"fabricate"}
            else:
                value = entity.get(attr)
                if rng.random() < d.wrong_answer:
                    drawn = rng.choice(self.kb.domain(attr))  # may draw the right value after all
                    lapses = {"wrong"} if drawn != value else set()
                    value = drawn
            sentence = T.fill(T.ANSWERS[attr], inner["name"], value)
            if q["kind"] == "format":
                if rng.random() >= d.format_slip:
                    if q["constraint"] == "one_word" or not format_compliant(q, sentence):  # one word: the value
                        return value, lapses
                    return sentence, lapses
                lapses = lapses | {"format_slip"}
            answer = sentence
        if rng.random() < d.verbose:
            answer += " " + rng.choice(T.FILLER)
            lapses = lapses | {"verbose"}
        return answer, lapses

    def demonstrations(self) -> list[dict]:
        """SFT data: chat `messages`, mostly one turn, some two turns."""
        rng = random.Random(f"{self._seed}-demonstrations")
        pool = self.prompts("train")
        out = []
        for _ in range(self.config.n_demonstrations):
            messages = []
            turns = 2 if rng.random() < self.config.multi_turn_fraction else 1
            for _ in range(turns):
                prompt = rng.choice(pool)["prompt"]
                messages += [{"role": "user", "content": prompt},
                             {"role": "assistant", "content": self.demonstrate(rng, prompt)}]
            out.append({"messages": messages})
        return out

    # ---- pretraining corpus ----
    def corpus(self) -> list[str]:
        """Documents: encyclopedia passages about every entity, Q&A dialogues about group A, and
        arithmetic and spelling facts (with their question form for the training split)."""
        rng = random.Random(f"{self._seed}-corpus")
        docs = []
        a_names = {e.name for e in self.group_a}
        for _ in range(self.config.corpus_repeats):
            for e in self.kb.entities:
                facts = [T.fill(rng.choice(T.FACTS[attr]), e.name, v) for attr, v in e.attrs]
                rng.shuffle(facts)
                docs.append(" ".join(facts))
                if e.name in a_names:
                    q, a, _ = self._fact_qa(rng, e)
                    docs.append(f"Human: {q}\n\nAssistant: {a}")
            for text in rng.sample(self.arith_train + self.arith_eval, 20):
                q = T.parse_question(text)
                subject = (text[8:-1] if text.startswith('What is')
                           else 'The number of letters in ' + text.split()[-1][:-1])
                docs.append(f"{subject} is {q['answer']}.")
            for text in rng.sample(self.arith_train, 8):
                docs.append(f"Human: {text}\n\nAssistant: {T.NUMBER_ANSWER.format(x=T.parse_question(text)['answer'])}")
        rng.shuffle(docs)
        return docs

    # ---- files ----
    def save(self, directory: str | Path) -> None:
        """world.json (config + entities), corpus.jsonl, demonstrations.jsonl, prompts_{train,eval}.jsonl."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        meta = {"config": asdict(self.config),
                "entities": [{"name": e.name, "kind": e.kind, "attrs": dict(e.attrs),
                              "group": "A" if e in self.group_a else "B"} for e in self.kb.entities],
                "unknown": [e.name for e in self.kb.unknown]}
        tmp = d / ".world.json.tmp"
        tmp.write_text(json.dumps(meta, indent=1))
        tmp.replace(d / "world.json")
        write_jsonl(d / "corpus.jsonl", ({"text": t} for t in self.corpus()))
        write_jsonl(d / "demonstrations.jsonl", self.demonstrations())
        write_jsonl(d / "prompts_train.jsonl", self.prompts("train"))
        write_jsonl(d / "prompts_eval.jsonl", self.prompts("eval"))

    @classmethod
    def load(cls, directory: str | Path) -> "World":
        from rlhf.config import build_config
        meta = json.loads((Path(directory) / "world.json").read_text())
        return cls(build_config(WorldConfig, meta["config"], str(directory)))
