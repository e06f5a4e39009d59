"""Causal interventions: patching, ablations, causal tracing."""
