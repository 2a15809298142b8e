"""The agent's tools: one small class each, with a name, a description and a declared argument schema."""
