"""The extension interface (``model.attach``) with an extension that is not an SAE: a probe-like
readout ``<name>.readout`` `[b, p, 2]` computed from a residual by a fixed linear map, plus a
write-back point ``<name>.steered`` whose edits reach the forward."""

from __future__ import annotations

import pytest
import torch

import mechscope as ms
from mechscope.models.extension import NewPoint


class Readout:
    """Adds ``<source>.readout`` = source @ W (read only) and ``<source>.steered`` (written back)."""

    def __init__(self, source: str, weight: torch.Tensor):
        self.source, self.weight = source, weight

    def hook_points(self, model):
        d = model.hook_point(self.source).width
        return [NewPoint(f"{self.source}.readout", self.source, self.weight.shape[1]),
                NewPoint(f"{self.source}.steered", self.source, d)]

    def hooks(self, model, fire):
        def compute(x, ctx):
            fire(f"{self.source}.readout", x @ self.weight.to(x.dtype))
            return fire(f"{self.source}.steered", x)

        return {self.source: compute}


@pytest.fixture
def readout(tiny):
    d = tiny.model.cfg.d_model
    return Readout("blocks.0.resid_post", torch.randn(d, 2, generator=torch.Generator().manual_seed(0)))


def test_attached_names_cache_hook_and_detach(tiny, readout):
    model, tokens = tiny.model, tiny.tokens
    before = list(model.names)
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens, "blocks.0.resid_post")
    with model.attach(readout):
        at = model.names.index("blocks.0.resid_post")
        assert model.names[at + 1 : at + 3] == ["blocks.0.resid_post.readout", "blocks.0.resid_post.steered"]
        point = model.hook_point("blocks.0.resid_post.readout")
        assert point.width == 2 and point.layer == 0 and point.site is None and point.source == "blocks.0.resid_post"
        with torch.no_grad():
            same, ext_cache = model.run_with_cache(tokens, "blocks.0.resid_post.*")
        assert torch.equal(same, logits)  # reading changes nothing
        expected = cache["blocks.0.resid_post"] @ readout.weight
        torch.testing.assert_close(ext_cache["blocks.0.resid_post.readout"], expected)
        # A hook on the write-back point changes the forward exactly as a hook on the source would.
        delta = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            steered = model.run_with_hooks(tokens, {"blocks.0.resid_post.steered": lambda x, ctx: x + delta})
            direct = model.run_with_hooks(tokens, {"blocks.0.resid_post": lambda x, ctx: x + delta})
        torch.testing.assert_close(steered, direct, atol=0, rtol=0)
        assert not torch.equal(steered, logits)
        # Gradients at the extension's points: d(sum of logits) / d(readout) is zero (read only),
        # d / d(steered) equals the gradient at the source.
        _, grads = model.run_with_cache(tokens, ["blocks.0.resid_post.steered", "blocks.1.resid_pre"],
                                        grad_metric=lambda l: l[:, -1].sum())
        torch.testing.assert_close(grads.grads["blocks.0.resid_post.steered"], grads.grads["blocks.1.resid_pre"])
    assert model.names == before
    with pytest.raises(ms.UnknownActivationError):
        model.hook_point("blocks.0.resid_post.readout")
    with torch.no_grad():
        assert torch.equal(model(tokens), logits)


def test_detached_on_exception_and_errors(tiny, readout):
    model = tiny.model
    before = list(model.names)
    with pytest.raises(RuntimeError, match="boom"), model.attach(readout):
        raise RuntimeError("boom")
    assert model.names == before and not model._runtime.entries
    with model.attach(readout):
        with pytest.raises(ms.MechscopeError, match="already exists"), model.attach(readout):
            pass
        assert "blocks.0.resid_post.readout" in model.names  # the outer attachment is intact
    assert model.names == before
    with pytest.raises(ms.UnknownActivationError, match="Closest valid names"):
        with model.attach(Readout("blocks.0.resid_pots", readout.weight)):
            pass
    assert model.names == before
    with pytest.raises(TypeError, match="not an extension"):
        with model.attach(object()):
            pass


def test_stop_early_records_the_same_activations_and_skips_later_blocks(tiny):
    model, tokens = tiny.model, tiny.tokens
    with torch.no_grad():
        _, full = model.run_with_cache(tokens, ["blocks.0.mlp.out", "embed"])
    fired = []
    with model.hooks({"blocks.1.resid_pre": lambda x, ctx: fired.append(ctx.name), "logits": lambda x, ctx: fired.append(ctx.name)}):
        logits, early = model.run_with_cache(tokens, ["blocks.0.mlp.out", "embed"], stop_early=True)
        assert not fired and logits is None  # blocks after 0 and the unembedding never ran
        logits, only_embed = model.run_with_cache(tokens, "embed", stop_early=True)
        assert not fired and logits is None
        last = f"blocks.{model.cfg.n_layers - 1}.resid_post"
        logits, deepest = model.run_with_cache(tokens, last, stop_early=True)
        assert logits is None and fired == ["blocks.1.resid_pre"] * (model.cfg.n_layers > 1)
        logits, _ = model.run_with_cache(tokens, "ln_final.out", stop_early=True)  # after the blocks: runs to the end
        assert logits is not None
    for name in full:
        assert torch.equal(early[name], full[name])
    assert torch.equal(only_embed["embed"], full["embed"])
    with pytest.raises(ms.MechscopeError, match="stop_early"):
        model.run_with_cache(tokens, "embed", stop_early=True, grad_metric=lambda l: l.sum())
    with torch.no_grad():
        assert model(tokens).shape[-1] == model.cfg.d_vocab  # the stop hook is gone


def test_hook_point_facts(tiny):
    model, cfg = tiny.model, tiny.model.cfg
    assert model.hook_point("blocks.0.attn.q").n_heads == cfg.n_heads
    assert model.hook_point("blocks.0.attn.k").n_heads == cfg.n_kv_heads
    assert model.hook_point("blocks.0.attn.v").width == cfg.d_head
    assert model.hook_point("blocks.0.mlp.post").width == cfg.d_mlp
    assert model.hook_point("logits").width == cfg.d_vocab
    assert model.hook_point("blocks.0.resid_pre").width == cfg.d_model
    explicit = {p.suffix for p in model.hook_points("blocks.0.*") if p.explicit_attention}
    assert explicit == {"attn.scores", "attn.pattern"}
    assert [p.name for p in model.hook_points("blocks.*.resid_pre")] == [
        f"blocks.{l}.resid_pre" for l in range(cfg.n_layers)]
    with pytest.raises(ms.SelectionError, match="one exact name"):
        model.hook_point("blocks.*.resid_post")
    with pytest.raises(TypeError):
        model.hook_point(None)
