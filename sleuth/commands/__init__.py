"""One module per CLI command; sleuth/cli.py registers them."""
