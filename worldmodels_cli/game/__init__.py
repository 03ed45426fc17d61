"""The real game: envs (real and fake), CarRacing's renderer, the policies, the agent, the episode loop."""
