"""Batched activation patching: equal to the one-forward-per-cell loop, and its identities."""
# patch_one_by_one shares no code with the batched path but the cell list: it slices each
# activation by hand, one forward per cell.

from __future__ import annotations

import pytest
import torch

import mechscope as ms
from mechscope.causal.metrics import kl_to
from mechscope.causal.patching import activation_patching, patch_one_by_one
from mechscope.data.tasks import PromptPairs


def _pairs(seed=0, n=3, pos=8):
    gen = torch.Generator().manual_seed(seed)
    clean = torch.randint(3, 97, (n, pos), generator=gen)
    corrupted = clean.clone()
    corrupted[:, 2] = torch.randint(3, 97, (n,), generator=gen)  # one corrupted slot
    return PromptPairs(clean, corrupted, torch.randint(3, 97, (n,), generator=gen), torch.randint(3, 97, (n,), generator=gen))


@pytest.mark.parametrize("component", ["resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "heads", "head_q",
                                       "head_k", "head_v", "head_pattern"])
def test_batched_equals_naive_loop(tiny, component):
    if component == "resid_mid" and tiny.model.cfg.parallel_attn_mlp:
        pytest.skip("parallel attention/MLP blocks have no resid_mid")
    pairs = _pairs()
    batched = activation_patching(tiny.model, pairs, component, variants_per_pass=5)
    naive = patch_one_by_one(tiny.model, pairs, component)
    assert torch.equal(batched.raw, naive), (batched.raw - naive).abs().max()


@pytest.mark.parametrize("component,per_position", [("heads", True), ("head_pattern", True), ("mlp_out", False)])
def test_other_grids_and_noising_equal_naive_loop(tiny, component, per_position):
    pairs = _pairs(2)
    model = tiny.model
    batched = activation_patching(model, pairs, component, per_position=per_position, direction="noise")
    naive = patch_one_by_one(model, pairs, component, per_position=per_position, direction="noise")
    assert batched.raw.shape[:-1] == ((2, 4, 8) if per_position else (2,))
    assert torch.equal(batched.raw, naive)
    kl = kl_to(model(pairs.clean).detach(), pairs)
    batched = activation_patching(model, pairs, component, per_position=per_position, metric=kl, variants_per_pass=3)
    naive = patch_one_by_one(model, pairs, component, per_position=per_position, metric=kl)
    assert torch.equal(batched.raw, naive)


def test_result_tables(tiny):
    result = activation_patching(tiny.model, _pairs(), "heads", per_position=True)
    frame = result.to_dataframe()
    assert list(frame.columns) == ["layer", "head", "pos", "normalized", "metric"] and len(frame) == 2 * 4 * 8
    best = result.top(1).iloc[0]
    layer, head, pos, value = int(best.layer), int(best["head"]), int(best.pos), best.normalized
    assert value == pytest.approx(float(result.values[layer, head, pos]))
    assert abs(value) == pytest.approx(float(result.values.abs().max()))  # denoising: distance from 0
    fig = result.plot()  # rows L{l}H{h}, columns positions
    assert fig.data[0].z.shape == (2 * 4, 8) and fig.data[0].y[5] == "L1H1" and fig.data[0].zmid == 0


def test_identities(tiny):
    model = tiny.model
    pairs = _pairs(1)
    same = PromptPairs(pairs.clean, pairs.clean.clone(), pairs.answers, pairs.wrong)
    with pytest.warns(ms.errors.MechscopeWarning, match="equal"):  # nothing to normalise by
        result = activation_patching(model, same, "resid_pre")
    torch.testing.assert_close(result.raw, result.clean_metric.expand_as(result.raw), atol=1e-5, rtol=0)
    full = activation_patching(model, pairs, "resid_pre")
    # restoring the whole clean residual at any layer, at the corrupted slot and everywhere after, is the
    # clean run; restoring only the corrupted slot (pos 2) at layer 0 already is, since nothing else differs
    torch.testing.assert_close(full.raw[0, 2], full.clean_metric, atol=1e-5, rtol=0)
    torch.testing.assert_close(full.values[0, 2], torch.tensor(1.0), atol=1e-4, rtol=0)
    torch.testing.assert_close(full.raw[0, 5], full.corrupted_metric, atol=1e-5, rtol=0)  # untouched slot: nothing


def test_bad_inputs():
    clean = torch.zeros(2, 5, dtype=torch.long)
    with pytest.raises(ms.SelectionError, match="differ in shape"):
        PromptPairs(clean, torch.zeros(2, 6, dtype=torch.long), torch.zeros(2, dtype=torch.long), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ms.SelectionError, match="non-empty"):
        PromptPairs(torch.zeros(0, 5, dtype=torch.long), torch.zeros(0, 5, dtype=torch.long),
                    torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long))


@pytest.mark.parametrize("component", ["resid_pre", "heads"])
def test_answer_logits_only_matches_within_rounding(tiny, component):
    pairs = _pairs(4)
    pairs.answer_positions = torch.tensor([7, 5, 6])  # not all the last position
    model = tiny.model
    fast = activation_patching(model, pairs, component, answer_logits_only=True)
    naive = patch_one_by_one(model, pairs, component)
    torch.testing.assert_close(fast.raw, naive, atol=1e-4, rtol=1e-5)
    kl = kl_to(model(pairs.clean).detach(), pairs)
    fast = activation_patching(model, pairs, component, metric=kl, answer_logits_only=True)
    torch.testing.assert_close(fast.raw, patch_one_by_one(model, pairs, component, metric=kl), atol=1e-4, rtol=1e-5)
    with pytest.raises(ms.SelectionError, match="reads_answer_only"):
        activation_patching(model, pairs, component, metric=lambda logits, p: logits[:, 0, 0], answer_logits_only=True)


def test_canonical_names_and_over_equal_the_short_words(tiny):
    model = tiny.model
    clean = tiny.tokens[:2]
    corrupted = clean.flip(-1)
    pairs = ms.PromptPairs(clean, corrupted, clean[:, 0], corrupted[:, 0])
    cases = [("heads", {}, "blocks.*.attn.z", {"over": ("head",)}),
             ("heads", {"per_position": True}, "blocks.*.attn.z", {"over": ("head", "pos")}),
             ("resid_pre", {}, "blocks.*.resid_pre", {}),
             ("mlp_out", {"per_position": False}, "blocks.*.mlp.out", {"over": ()}),
             ("head_k", {}, "blocks.*.attn.k", {})]
    for word, old, pattern, new in cases:
        a = ms.activation_patching(model, pairs, word, **old)
        b = ms.activation_patching(model, pairs, pattern, **new)
        assert a.axes == b.axes and torch.equal(a.raw, b.raw), (word, pattern)
    c = ms.attribution_patching(model, pairs, "blocks.*.attn.z", over=("head", "pos"))
    assert c.axes == ("head", "pos") and c.raw.shape[:3] == (model.cfg.n_layers, model.cfg.n_heads, clean.shape[1])
    with pytest.raises(ms.UnknownActivationError, match="Closest valid names"):
        ms.activation_patching(model, pairs, "blocks.*.attn.zz")
    with pytest.raises(ms.SelectionError, match="one activation of every block"):
        ms.activation_patching(model, pairs, "blocks.0.attn.z")
    with pytest.raises(ms.SelectionError, match="no head axis"):
        ms.activation_patching(model, pairs, "blocks.*.resid_post", over=("head",))
    with pytest.raises(ms.SelectionError, match="over must list"):
        ms.activation_patching(model, pairs, "blocks.*.attn.z", over=("pos", "head"))
    with pytest.raises(ms.SelectionError, match="not both"):
        ms.activation_patching(model, pairs, "blocks.*.attn.z", over=("head",), per_position=True)
