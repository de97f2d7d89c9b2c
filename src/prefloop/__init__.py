"""prefloop: RLHF as a closed loop — pretrain, SFT, human preferences, reward model, PPO, serve."""

__version__ = "0.1.0"
