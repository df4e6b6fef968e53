"""The embedded task world: a seeded knowledge base, its text, its prompts and a programmatic gold reward."""
from rlhf.world.gold import GoldScore, score
from rlhf.world.world import World, WorldConfig

__all__ = ["World", "WorldConfig", "GoldScore", "score"]
