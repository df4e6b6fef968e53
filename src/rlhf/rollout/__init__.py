from rlhf.rollout.engine import Rollout, SamplingConfig, sample, generate_texts

__all__ = ["Rollout", "SamplingConfig", "sample", "generate_texts"]
