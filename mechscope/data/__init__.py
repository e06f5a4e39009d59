"""Prompt tasks and corpora."""
