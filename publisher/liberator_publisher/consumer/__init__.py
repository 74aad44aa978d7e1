"""The subscriber library for feature teams: pull, parse CloudEvents, dedupe, retry, dead-letter."""
