"""Thin adapters that hand sleuth's agent loop, tools and rewards to external RL trainers (TRL, verl, OpenRLHF)."""
