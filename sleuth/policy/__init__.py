"""Policies: the local token-in/token-out transformers model, and any OpenAI-compatible server."""
