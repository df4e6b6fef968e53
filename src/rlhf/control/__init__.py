"""RLHF for control: deep RL from preferences over trajectory clips (gymnasium environments, stable-baselines3
agents, a reward-model ensemble, simulated B-Pref teachers). Needs the `control` extra: pip install rlhf[control]."""
