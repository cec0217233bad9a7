"""Reinforcement learning with verifiable rewards: GRPO for every adapter method."""
