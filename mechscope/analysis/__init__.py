"""Observational analysis: lenses, direct logit attribution, head detectors, weight circuits."""
