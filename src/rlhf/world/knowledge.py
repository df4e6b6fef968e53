"""A knowledge base of fictional entities. Names are built from syllables, so nothing here is known
to the model except through the pretraining corpus; entities kept out of the base ("unknown") are the
hallucination test."""
from __future__ import annotations

import random
from dataclasses import dataclass

SYLLABLES = ["ka", "lo", "mi", "ra", "ven", "tor", "sel", "dun", "bri", "mar", "zel", "qua", "fen", "lis",
             "gor", "pim", "tal", "rus", "vek", "nor", "sa", "el", "ob", "ith", "dra", "mo", "pel", "shi"]
OCCUPATIONS = ["baker", "farmer", "sailor", "painter", "doctor", "teacher", "miner", "weaver", "potter", "singer"]
COLORS = ["red", "blue", "green", "yellow", "purple", "orange", "white", "black"]
REGIONS = ["Ostrel", "Vandry", "Kelmark", "Sorrow Coast", "Amberfold", "the Highmoor"]
GOODS = ["glass", "wool", "salt", "cheese", "silk", "copper", "honey", "timber"]
MATERIALS = ["oak", "iron", "bronze", "stone", "silver", "clay", "bone", "marble"]
THING_KINDS = ["lamp", "bell", "clock", "statue", "harp", "compass"]

# attribute -> (entity kind, value domain name)
ATTRIBUTES = {
    "occupation": "person", "city": "person", "color": "person",
    "region": "place", "goods": "place",
    "material": "thing", "maker": "thing",
}


@dataclass(frozen=True)
class Entity:
    name: str
    kind: str  # person | place | thing
    attrs: tuple[tuple[str, str], ...]

    def get(self, attr: str) -> str:
        return dict(self.attrs)[attr]


def make_name(rng: random.Random, used: set[str], kind: str) -> str:
    while True:
        n = rng.choice([2, 2, 3])
        stem = "".join(rng.choice(SYLLABLES) for _ in range(n)).capitalize()
        name = f"the {stem} {rng.choice(THING_KINDS)}" if kind == "thing" else stem
        if stem not in used:
            used.add(stem)
            return name


def stem(name: str) -> str:
    """The distinctive part of a name (things are named 'the Velmor lamp')."""
    return name.split()[1] if name.startswith("the ") else name


@dataclass
class KnowledgeBase:
    entities: list[Entity]
    unknown: list[Entity]  # well-formed entities that do not exist in this world

    def by_name(self) -> dict[str, Entity]:
        return {e.name.lower(): e for e in self.entities}

    def domain(self, attr: str) -> list[str]:
        """Every value the attribute can take: a mention of any other value is a wrong answer."""
        return {
            "occupation": OCCUPATIONS, "color": COLORS, "region": REGIONS, "goods": GOODS, "material": MATERIALS,
            "city": [e.name for e in self.entities if e.kind == "place"],
            "maker": [e.name for e in self.entities if e.kind == "person"],
        }[attr]


def build_kb(rng: random.Random, n_people: int, n_places: int, n_things: int, n_unknown: int) -> KnowledgeBase:
    used: set[str] = set()
    places = [Entity(make_name(rng, used, "place"), "place",
                     (("region", rng.choice(REGIONS)), ("goods", rng.choice(GOODS)))) for _ in range(n_places)]
    people = [Entity(make_name(rng, used, "person"), "person",
                     (("occupation", rng.choice(OCCUPATIONS)), ("city", rng.choice(places).name),
                      ("color", rng.choice(COLORS)))) for _ in range(n_people)]
    things = [Entity(make_name(rng, used, "thing"), "thing",
                     (("material", rng.choice(MATERIALS)),
                      ("maker", rng.choice(people).name))) for _ in range(n_things)]
    kinds = ["person"] * 5 + ["place"] * 3 + ["thing"] * 2
    unknown = []
    for i in range(n_unknown):
        kind = kinds[i % len(kinds)]
        unknown.append(Entity(make_name(rng, used, kind), kind, ()))
    return KnowledgeBase(people + places + things, unknown)
