"""The bundled SmolLM2-135M-Instruct: a real model with known behaviour."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

import mechscope as ms
from mechscope import HookedModel
from mechscope.models.bundled import cached_dir

IOI = "When Mary and John went to the store, John gave a drink to"


def test_loads_with_expected_architecture(smol):
    cfg = smol.cfg
    assert (cfg.family, cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.d_head, cfg.d_mlp, cfg.d_vocab) == (
        "llama", 30, 576, 9, 3, 64, 1536, 49152)
    assert cfg.tied_embeddings and not cfg.default_prepend_bos
    assert len(smol.names) == 2 + 30 * 20 + 1
    assert smol.names[:3] == ["embed", "blocks.0.resid_pre", "blocks.0.ln1.out"]


def test_paris_is_the_greedy_continuation(smol):
    assert smol.generate("The capital of France is", max_new_tokens=1) == "The capital of France is Paris"
    logits = smol("The capital of France is")
    assert logits[0, -1].argmax().item() == smol.to_single_token(" Paris")


def test_ioi_logit_difference_is_positive(smol):
    logits = smol(IOI)
    diff = logits[0, -1, smol.to_single_token(" Mary")] - logits[0, -1, smol.to_single_token(" John")]
    assert diff > 3.0


def test_logits_bit_identical_to_a_separately_loaded_plain_hf_model(smol):
    """issue 11, tests that prove claims: compare with a transformers model loaded on its own
    from the same cache directory (no mechscope code touches it), not with ``smol.hf``."""
    plain = AutoModelForCausalLM.from_pretrained(cached_dir("smollm2-135m"), dtype=torch.float32).eval()
    assert plain is not smol.hf and not any(isinstance(m, HookedModel) for m in plain.modules())
    tokens = smol.to_tokens(IOI)
    with torch.no_grad():
        assert torch.equal(smol(tokens), plain(tokens).logits)
    eager = AutoModelForCausalLM.from_pretrained(cached_dir("smollm2-135m"), dtype=torch.float32,
                                                 attn_implementation="eager").eval()
    with torch.no_grad():
        eager_logits = eager(tokens).logits
    names = ["blocks.*.attn.pattern", "blocks.12.resid_mid", "blocks.12.mlp.out", "blocks.12.resid_post"]
    logits, cache = smol.run_with_cache(tokens, names)  # patterns cached: every layer's explicit attention path
    assert (logits - eager_logits).abs().max() < 1e-4
    torch.testing.assert_close(cache["blocks.12.attn.pattern"].sum(-1), torch.ones(1, 9, tokens.shape[1]))
    torch.testing.assert_close(cache["blocks.12.resid_mid"] + cache["blocks.12.mlp.out"],
                               cache["blocks.12.resid_post"], atol=1e-4, rtol=0)


# Logits a float64 Llama forward computed from the GGUF without transformers (own dequantisers,
# llama.cpp's Q/K layout and RoPE): tests/real/fixtures/make_reference.py.
REFERENCE = Path(__file__).parent / "fixtures" / "smollm2_reference_logits.safetensors"
# mechscope runs in fp32: rounding (eps 1.2e-7) accumulated over 30 layers gives 2.6e-5 on logits
# up to 28.6 on the developers' CPU; 2e-4 leaves room for other BLAS kernels, and any real error
# (a RoPE layout, a norm, a head permutation, a wrong dequantisation) moves logits by far more.
REFERENCE_ATOL = 2e-4


def test_logits_match_an_independent_float64_reference_from_the_gguf(smol):
    """issue 11, tests that prove claims: a reference from an implementation other than
    transformers' GGUF path, stored as a fixture."""
    reference = load_file(REFERENCE)
    tokens = reference["tokens"]
    assert torch.equal(smol.to_tokens(IOI)[0], tokens)
    with torch.no_grad():
        logits = smol(tokens[None])[0].double()  # [T, vocab]
    top_k = reference["top_ids"].shape[-1]
    assert torch.equal(logits.topk(top_k, dim=-1).indices, reference["top_ids"])
    torch.testing.assert_close(logits.gather(-1, reference["top_ids"]), reference["top_logits"],
                               atol=REFERENCE_ATOL, rtol=0)
    torch.testing.assert_close(logits.logsumexp(-1), reference["logsumexp"], atol=REFERENCE_ATOL, rtol=0)
    assert reference["top_ids"][-1, 0].item() == smol.to_single_token(" Mary")


def test_left_padded_prompts_of_different_lengths(smol):
    """Left padding puts pads before real tokens, so the attention mask and the position ids
    derived from it must both work for the real logits to match. (Right padding cannot fail
    this check under causal attention; right-padded "last token" readers are tested in
    tests/analysis/test_padded_batches.py.)"""
    prompts = [IOI, "The capital of France is", "Hello"]
    tokens, mask = smol.to_tokens(prompts, padding_side="left", return_mask=True)
    with torch.no_grad():
        batched = smol(tokens, mask)
        for i, prompt in enumerate(prompts):
            alone = smol(prompt)[0]
            torch.testing.assert_close(batched[i, mask[i].bool()], alone, atol=1e-4, rtol=0)


def test_tokens_round_trip(smol):
    assert smol.to_str_tokens("When Mary and John")[:2] == ["When", " Mary"]
    tokens = smol.to_tokens(IOI)
    assert smol.to_string(tokens[0]) == IOI
    with_bos = smol.to_tokens(IOI, prepend_bos=True)
    assert with_bos[0, 0].item() == smol.tokenizer.bos_token_id and torch.equal(with_bos[0, 1:], tokens[0])
    with pytest.raises(ms.SelectionError, match="not one"):
        smol.to_single_token(" Marylebone station")


def test_repeated_random_tokens_show_in_context_learning(smol):
    generator = torch.Generator().manual_seed(0)
    half = torch.randint(100, 20000, (1, 50), generator=generator)
    tokens = torch.cat([half, half], dim=1)
    with torch.no_grad():
        logits = smol(tokens)
    loss = torch.nn.functional.cross_entropy(logits[0, :-1], tokens[0, 1:], reduction="none")
    first, second = loss[:49].mean().item(), loss[50:].mean().item()
    assert first > 10 and second < 4, (first, second)


def test_full_cache_holds_each_activation_once(smol):
    tokens = smol.to_tokens([IOI] * 2)
    _, cache = smol.run_with_cache(tokens)
    naive = sum(t.numel() * t.element_size() for t in cache.values())
    aliased = sum(cache[f"blocks.{l}.resid_post"].numel() * 4 for l in range(29)) + cache["embed"].numel() * 4
    assert cache.nbytes == naive - aliased  # resid_pre[l+1] is resid_post[l]; resid_pre[0] is embed
