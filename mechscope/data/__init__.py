"""Prompt tasks, corpora, and activation harvesting (`harvest`) for everything fitted on activations."""
