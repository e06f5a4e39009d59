"""Toy models mechscope trains itself, for results whose ground truth is known."""
