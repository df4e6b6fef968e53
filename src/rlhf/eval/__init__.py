"""Evaluation primitives the stages and studies use: the gold evaluation of a policy on held-out world
prompts (`gold_eval`), a reward model's accuracy and best-of-N curves (`reward_eval`), best-of-N as a stage
(`bon`), and the proxy/gold/KL check during PPO (`drift`). The studies built on them are in `rlhf.studies`."""
