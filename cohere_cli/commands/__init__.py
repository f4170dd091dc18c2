"""Command implementations: one module per CLI command, called from cohere_cli.cli."""
