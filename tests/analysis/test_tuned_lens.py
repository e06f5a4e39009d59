"""Tuned lens on a tiny model: identity start equals the logit lens, training helps, resume is exact."""

from __future__ import annotations

import pytest
import torch

from mechscope.analysis.lens import logit_lens
from mechscope.analysis.tuned_lens import TunedLens, lens_kl, lens_points, train_tuned_lens
from mechscope.training import checkpoint_history


@pytest.fixture(scope="module")
def llama():
    from conftest import build_tiny

    return build_tiny("llama").model


def _tokens(seed, n=16):
    return torch.randint(3, 97, (n, 16), generator=torch.Generator().manual_seed(seed))


def test_untrained_tuned_lens_is_the_logit_lens(llama):
    tokens = _tokens(1, 4)
    identity = TunedLens(lens_points(llama), llama.cfg.d_model)
    torch.testing.assert_close(lens_kl(llama, tokens, identity), lens_kl(llama, tokens))
    reference = logit_lens(llama, tokens).kl_to_final[:-1, :, 1:].mean((1, 2))  # position 0 excluded
    torch.testing.assert_close(lens_kl(llama, tokens), reference, atol=1e-5, rtol=1e-4)


def test_training_lowers_held_out_kl_at_every_point(llama, tmp_path):
    lens = train_tuned_lens(llama, _tokens(2, 32), steps=60, batch_tokens=128, points_per_step=2, lr=1e-2,
                            out=tmp_path, progress=False)
    held_out = _tokens(3, 8)
    before, after = lens_kl(llama, held_out), lens_kl(llama, held_out, lens)
    assert (after < before).all(), (before, after)
    loaded = TunedLens.load(tmp_path)
    torch.testing.assert_close(lens_kl(llama, held_out, loaded), after)


def test_resume_equals_uninterrupted(llama, tmp_path):
    kwargs = dict(steps=12, batch_tokens=64, points_per_step=1, checkpoint_every=4, progress=False)
    straight = train_tuned_lens(llama, _tokens(4), out=tmp_path / "a", **kwargs)
    train_tuned_lens(llama, _tokens(4), out=tmp_path / "b", stop_after=7, **kwargs)
    checkpoint = tmp_path / "b" / "checkpoint.safetensors"
    assert checkpoint_history(checkpoint) == (7, [[0, 7]])
    resumed = train_tuned_lens(llama, _tokens(4), out=tmp_path / "b", **kwargs)
    assert checkpoint_history(checkpoint) == (12, [[0, 7], [7, 12]])  # the resumed run ran steps 7..12 only
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name
    with pytest.raises(ValueError, match="other settings"):
        train_tuned_lens(llama, _tokens(4), out=tmp_path / "b", **{**kwargs, "steps": 13})
