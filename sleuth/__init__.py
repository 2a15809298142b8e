"""sleuth: research agents trained end-to-end with reinforcement learning."""

__version__ = "0.1.0"
