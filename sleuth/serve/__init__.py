"""Serving sleuth over HTTP (OpenAI-compatible endpoint; see DESIGN.md for what else belongs here)."""
