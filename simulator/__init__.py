"""Drives gongji: the CLI, the broker client, the demo population (and, later, scenarios)."""
