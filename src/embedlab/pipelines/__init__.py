"""Pipelines: functions that compose several stages (compare, evaluate, embed, build an index); the CLI
only parses its options and calls them."""
