"""SAEs attached to a model with `model.saes(...)`: their latents are cache entries and hook
points, checked against the SAE applied by hand to the unspliced activations."""

from __future__ import annotations

import pytest
import torch
from conftest import FAMILY_IDS, build_tiny

import mechscope as ms
from mechscope.sae.train import init_sae

HOOK = "blocks.1.resid_post"


def _sae(d_in: int, hook: str = HOOK, **kw) -> ms.SAE:
    cfg = ms.SAEConfig(d_in=d_in, d_sae=48, architecture=kw.pop("architecture", "topk"), k=6, hook_name=hook, **kw)
    sae = init_sae(ms.SAE(cfg), seed=4)
    with torch.no_grad():
        sae.b_enc.fill_(0.05)
        sae.b_dec.normal_(generator=torch.Generator().manual_seed(5))
    return sae


@pytest.mark.parametrize("family", FAMILY_IDS)
def test_attached_names_hold_what_the_sae_computes(family):
    built = build_tiny(family)
    model, tokens = built.model, built.tokens
    sae = _sae(model.cfg.d_model)
    _, plain = model.run_with_cache(tokens, HOOK)
    with torch.no_grad():
        latents = sae.encode(plain[HOOK])
        recon = sae.decode(latents)
        # The reference splice: a plain hook writing the hand-computed reconstruction.
        spliced = model.run_with_hooks(tokens, {HOOK: lambda x, ctx: recon})
    with model.saes(sae, keep_error=True):
        assert [n for n in model.names if ".sae." in n] == [f"{HOOK}.sae.{s}" for s in ("input", "latents", "recon", "error")]
        logits, cache = model.run_with_cache(tokens, f"{HOOK}.sae.*")
    torch.testing.assert_close(cache[f"{HOOK}.sae.input"], plain[HOOK])
    torch.testing.assert_close(cache[f"{HOOK}.sae.latents"], latents, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cache[f"{HOOK}.sae.recon"], recon, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cache[f"{HOOK}.sae.error"], plain[HOOK] - recon, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits, model(tokens), rtol=1e-4, atol=1e-4)  # the error term keeps the forward
    assert not any(".sae." in n for n in model.names)  # detached on exit
    with model.saes(sae):  # no error term: the reconstruction replaces the activation
        torch.testing.assert_close(model(tokens), spliced, rtol=1e-5, atol=1e-5)


def test_a_hook_on_the_latents_edits_what_is_written_back():
    built = build_tiny("llama")
    model, tokens = built.model, built.tokens
    sae = _sae(model.cfg.d_model)
    _, plain = model.run_with_cache(tokens, HOOK)
    with torch.no_grad():
        latents = sae.encode(plain[HOOK])
    j = int((latents != 0).sum((0, 1)).argmax())  # the latent that fires most

    def zero_j(z, ctx):
        z[..., j] = 0.0  # in place, returning nothing

    def scale_j(z, ctx):
        return z.index_fill(-1, torch.tensor([j]), 0.0) + 3 * z * (torch.arange(z.shape[-1]) == j)

    edited = plain[HOOK] - latents[..., j : j + 1] * sae.W_dec[j].detach()
    with model.saes(sae, keep_error=True):
        _, cache = model.run_with_cache(tokens, HOOK)
        with model.hooks({f"{HOOK}.sae.latents": zero_j}):
            _, cache_zero = model.run_with_cache(tokens, HOOK)
        with model.hooks({f"{HOOK}.sae.latents": scale_j}):
            _, cache_scale = model.run_with_cache(tokens, HOOK)
    torch.testing.assert_close(cache[HOOK], plain[HOOK], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cache_zero[HOOK], edited, rtol=1e-5, atol=1e-5)
    tripled = plain[HOOK] + 2 * latents[..., j : j + 1] * sae.W_dec[j].detach()
    torch.testing.assert_close(cache_scale[HOOK], tripled, rtol=1e-5, atol=1e-5)


def test_latent_gradients_are_the_decoder_times_the_activation_gradient():
    built = build_tiny("gpt2")
    model, tokens = built.model, built.tokens
    sae = _sae(model.cfg.d_model, architecture="relu")

    def metric(logits):
        return logits[:, -1, 7].sum()

    with model.saes(sae, keep_error=True):
        _, cache = model.run_with_cache(tokens, [HOOK, f"{HOOK}.sae.latents"], grad_metric=metric)
    # d metric / d latents = (d metric / d written activation) @ W_dec.T
    expected = cache.grads[HOOK] @ sae.W_dec.detach().T
    torch.testing.assert_close(cache.grads[f"{HOOK}.sae.latents"], expected, rtol=1e-4, atol=1e-5)


def test_transcoder_names_are_keyed_by_the_input():
    built = build_tiny("llama")
    model, tokens = built.model, built.tokens
    sae = _sae(model.cfg.d_model, hook="blocks.0.ln2.out", architecture="relu", d_out=model.cfg.d_model,
               output_hook_name="blocks.0.mlp.out")
    _, plain = model.run_with_cache(tokens, ["blocks.0.ln2.out", "blocks.0.mlp.out"])
    with model.saes(sae, keep_error=True):
        logits, cache = model.run_with_cache(tokens, "blocks.0.ln2.out.sae.*")
    torch.testing.assert_close(cache["blocks.0.ln2.out.sae.latents"], sae.encode(plain["blocks.0.ln2.out"]).detach(),
                               rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cache["blocks.0.ln2.out.sae.error"],
                               plain["blocks.0.mlp.out"] - cache["blocks.0.ln2.out.sae.recon"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits, model(tokens), rtol=1e-4, atol=1e-4)


def test_attaching_mistakes_are_refused():
    built = build_tiny("llama")
    model = built.model
    with pytest.raises(ms.SelectionError, match="d_in = 10"), model.saes(_sae(10)):
        pass
    sae = _sae(model.cfg.d_model)
    with pytest.raises(ms.MechscopeError, match="already"), model.saes(sae, sae):
        pass
    assert not any(".sae." in n for n in model.names)
    with pytest.raises(ms.UnknownActivationError):
        model.run_with_cache(built.tokens, f"{HOOK}.sae.latents")


def test_attached_sae_can_leave_position_0_and_outliers_alone():
    built = build_tiny("llama")
    model, tokens = built.model, built.tokens
    sae = _sae(model.cfg.d_model)
    boost = {HOOK: lambda x, ctx: x.index_fill(1, torch.tensor([5]), 0.0) + 1000.0 * (torch.arange(x.shape[1]) == 5)[:, None]}
    with model.hooks(boost):  # position 5 becomes a massive outlier before the SAE reads it
        _, plain = model.run_with_cache(tokens, HOOK)
        with model.saes(sae, skip_first=True, outlier_ratio=10.0):
            _, cache = model.run_with_cache(tokens, HOOK)
    with torch.no_grad():
        recon = sae(plain[HOOK])
    assert torch.equal(cache[HOOK][:, [0, 5]], plain[HOOK][:, [0, 5]])  # left as they were
    torch.testing.assert_close(cache[HOOK][:, 1:5], recon[:, 1:5], rtol=1e-5, atol=1e-5)
