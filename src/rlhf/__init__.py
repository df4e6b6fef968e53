"""rlhf: reinforcement learning from human feedback, end to end."""

__version__ = "0.1.0"
