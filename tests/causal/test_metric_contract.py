"""Issue 11, "Raw errors" / metric contract: ``metric(logits [batch, pos, vocab], pairs) ->
[batch]`` is checked once, in `checked_metric`, with a message stating the contract; a metric
that cannot take ``(logits, pairs)`` is refused before any forward; attribution patching's
metric must be differentiable (before: reshape errors, AttributeError, autograd's "element 0 of
tensors does not require grad")."""

from __future__ import annotations

import pytest
import torch
from conftest import build_tiny

import mechscope as ms
from mechscope import errors
from mechscope.causal.attribution import attribution_patching
from mechscope.causal.metrics import (
    answer_logprob,
    checked_metric,
    checked_metric_value,
    kl_to,
    logit_diff,
    prob_diff,
)
from mechscope.causal.patching import activation_patching, patch_one_by_one
from mechscope.causal.path_patching import path_patching
from mechscope.data.tasks import PromptPairs
from mechscope.models.runtime import checked_loss

CONTRACT = r"metric\(logits \[batch, pos, vocab\], pairs\) -> tensor \[batch\]"

BAD_METRICS = {
    "scalar": (lambda logits, pairs: logit_diff(logits, pairs).mean(), r"returned shape \(\), expected \(3,\).*mean"),
    "batch x vocab": (lambda logits, pairs: logits[:, -1], r"returned shape \(3, 97\), expected \(3,\)"),
    "float": (lambda logits, pairs: logit_diff(logits, pairs).sum().item(), r"returned float, expected a tensor"),
    "list": (lambda logits, pairs: list(logit_diff(logits, pairs)), r"returned list, expected a tensor"),
    "complex": (lambda logits, pairs: logit_diff(logits, pairs).to(torch.complex64), r"dtype torch.complex64"),
}


@pytest.fixture(scope="module")
def llama():
    return build_tiny("llama")


@pytest.fixture(scope="module")
def pairs():
    gen = torch.Generator().manual_seed(0)
    clean = torch.randint(3, 97, (3, 7), generator=gen)
    corrupted = clean.clone()
    corrupted[:, 1:3] = torch.randint(3, 97, (3, 2), generator=gen)
    return PromptPairs(clean, corrupted, torch.randint(3, 97, (3,), generator=gen),
                       torch.randint(3, 97, (3,), generator=gen))


def test_checked_metrics_return_the_metrics_values_and_keep_their_attributes(llama, pairs):
    logits = llama.model(pairs.clean).detach()
    for metric in (logit_diff, prob_diff, answer_logprob, kl_to(logits, pairs), lambda logits, pairs: logits[:, 0, 0]):
        checked = checked_metric(metric)
        assert torch.equal(checked(logits, pairs), metric(logits, pairs))
        assert getattr(checked, "reads_answer_only", False) == getattr(metric, "reads_answer_only", False)
        assert checked_metric(checked) is checked
    assert checked_metric(logit_diff).reads_answer_only


@pytest.mark.parametrize("case", BAD_METRICS)
def test_bad_metric_values_state_the_contract(llama, pairs, case):
    metric, match = BAD_METRICS[case]
    logits = llama.model(pairs.clean).detach()
    with pytest.raises(errors.MetricError, match=match) as info:
        checked_metric(metric)(logits, pairs)
    assert isinstance(info.value, ValueError)
    assert "one value per prompt" in str(info.value) or "real values" in str(info.value)
    with pytest.raises(errors.MetricError, match=CONTRACT):
        checked_metric_value(metric(logits, pairs), len(pairs))


@pytest.mark.parametrize("metric", [lambda logits: logits[:, -1, 0], lambda: None, "logit_diff"])
def test_a_metric_that_cannot_take_logits_and_pairs_is_refused(metric):
    with pytest.raises(errors.SignatureError, match=r"the metric (is called as|must be a function) " + CONTRACT):
        checked_metric(metric)


PATCHERS = {
    "attribution": lambda model, pairs, metric: attribution_patching(model, pairs, "resid_pre", metric=metric),
    "activation": lambda model, pairs, metric: activation_patching(model, pairs, "heads", metric=metric),
    "one_by_one": lambda model, pairs, metric: patch_one_by_one(model, pairs, "mlp_out", metric=metric),
    "path": lambda model, pairs, metric: path_patching(model, pairs, metric=metric),
}


@pytest.mark.parametrize("method", PATCHERS)
@pytest.mark.parametrize("case", BAD_METRICS)
def test_patching_methods_check_the_metric(llama, pairs, case, method):
    """Before: the scalar case crashed in the sum over prompts (or was broadcast into every
    prompt's value by attribution patching), a float with AttributeError."""
    metric, match = BAD_METRICS[case]
    with pytest.raises(errors.MetricError, match=match):
        PATCHERS[method](llama.model, pairs, metric)


@pytest.mark.parametrize("metric", [
    lambda logits, pairs: torch.zeros(len(pairs)),  # a constant
    lambda logits, pairs: logit_diff(logits.detach(), pairs),
    lambda logits, pairs: (logits[:, -1].argmax(-1) == pairs.answers).float(),  # accuracy: piecewise constant
])
def test_attribution_patching_needs_a_differentiable_metric(llama, pairs, metric):
    """Before: autograd's "element 0 of tensors does not require grad and does not have a grad_fn"."""
    with pytest.raises(errors.MetricError, match="differentiated by attribution patching, returned a tensor with "
                                                  "no gradient: it does not depend on the logits"):
        attribution_patching(llama.model, pairs, "resid_pre", metric=metric)
    assert not llama.model._runtime.entries  # the hooks of the failed run are gone


def test_a_one_argument_metric_fails_before_any_forward(llama, pairs):
    with pytest.raises(errors.SignatureError, match=r"\(logits \[batch, pos, vocab\], pairs\)"):
        attribution_patching(llama.model, pairs, metric=lambda logits: logits[:, -1, 0])


def test_checked_loss_needs_a_differentiable_scalar():
    x = torch.ones(3, requires_grad=True)
    assert checked_loss((x * 2).sum(), "grad_metric") is not None
    for value, match in [(1.0, "got float"), (x * 2, r"a scalar, got shape \(3,\)"), (torch.tensor(2.0), "no gradient")]:
        with pytest.raises(errors.MetricError, match=match):
            checked_loss(value, "grad_metric")


def test_bundled_model_attribution_with_a_mean_metric_is_a_clear_error(smol):
    pairs = ms.ioi(smol, 2)
    with pytest.raises(errors.MetricError, match=r"returned shape \(\), expected \(2,\).*not their mean"):
        attribution_patching(smol, pairs, "resid_pre", metric=lambda logits, pairs: logit_diff(logits, pairs).mean())
