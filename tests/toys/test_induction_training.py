"""The induction toy: data, attention-only structure, determinism and exact resume."""

from __future__ import annotations

import torch

import mechscope as ms
from mechscope.toys.induction import InductionToyConfig, repeated_span_batch, train_induction_model
from mechscope.training import checkpoint_history

SMALL = InductionToyConfig(d_model=32, n_heads=2, d_vocab=64, seq_len=32, min_span=4, max_span=10, max_prefix=4,
                           batch=8, steps=30, warmup=5, checkpoint_every=10)


def test_batches_are_deterministic_and_periodic():
    first, again = repeated_span_batch(SMALL, 7), repeated_span_batch(SMALL, 7)
    assert torch.equal(first, again) and not torch.equal(first, repeated_span_batch(SMALL, 8))
    for row in first:  # after a prefix of at most max_prefix, the row repeats with some period
        assert any(torch.equal(row[p + L:], row[p:-L]) for L in range(4, 11) for p in range(0, 5)
                   if p + L < len(row))


def test_resumed_training_equals_uninterrupted(tmp_path):
    straight = train_induction_model(tmp_path / "a", SMALL, progress=False)
    train_induction_model(tmp_path / "b", SMALL, progress=False, stop_after=17)  # dies after step 17
    checkpoint = tmp_path / "b" / "checkpoint.safetensors"
    assert checkpoint.is_file() and not (tmp_path / "b" / "model").exists()
    assert checkpoint_history(checkpoint) == (17, [[0, 17]])
    resumed = train_induction_model(tmp_path / "b", SMALL, progress=False)
    assert checkpoint_history(checkpoint) == (30, [[0, 17], [17, 30]])  # the resumed run ran steps 17..30 only
    for (name, a), (_, b) in zip(straight.hf.state_dict().items(), resumed.hf.state_dict().items()):
        assert torch.equal(a, b), name


def test_trained_toy_is_attention_only_and_loads_with_mechscope(tmp_path):
    train_induction_model(tmp_path, SMALL, progress=False)
    model = ms.load(tmp_path / "model")
    assert model.tokenizer is None and model.cfg.family == "gpt2" and model.cfg.n_layers == 2
    tokens = repeated_span_batch(SMALL, 999)
    _, cache = model.run_with_cache(tokens, "blocks.*.mlp.out")
    assert all(cache[f"blocks.{l}.mlp.out"].abs().max() == 0 for l in range(2))
    again = train_induction_model(tmp_path, SMALL, progress=False)  # finished run: loaded, not retrained
    assert torch.equal(again(tokens), model(tokens))
