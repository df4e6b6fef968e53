"""Studies: experiments built on the pipeline and the trainers, with the world's gold reward as the judge.

  seeds     `rlhf study seeds`: the whole pipeline once per seed, its result with seeds as the unit
  compare   `rlhf study compare`: PPO-ptx, PPO, DPO, best-of-N, RAFT, RRHF, GRPO and RLOO under one budget
  overopt   `rlhf study overopt`: proxy vs gold reward against sqrt(KL) (Gao et al. 2022)
  signals   `rlhf study signals`: where PPO's gold-free stop rules would have ended a run

They sit above `rlhf.pipeline` and `rlhf.stages` (which they run); nothing below imports them.
"""
