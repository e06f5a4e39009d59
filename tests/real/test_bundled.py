"""The bundled SmolLM2-135M-Instruct: a real model with known behaviour."""

from __future__ import annotations

import pytest
import torch

import mechscope as ms

IOI = "When Mary and John went to the store, John gave a drink to"


def test_loads_with_expected_architecture(smol):
    cfg = smol.cfg
    assert (cfg.family, cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.d_head, cfg.d_mlp, cfg.d_vocab) == (
        "llama", 30, 576, 9, 3, 64, 1536, 49152)
    assert cfg.tied_embeddings and not cfg.default_prepend_bos
    assert len(smol.names) == 2 + 30 * 16 + 1
    assert smol.names[:3] == ["embed", "blocks.0.resid_pre", "blocks.0.ln1.out"]


def test_paris_is_the_greedy_continuation(smol):
    assert smol.generate("The capital of France is", max_new_tokens=1) == "The capital of France is Paris"
    logits = smol("The capital of France is")
    assert logits[0, -1].argmax().item() == smol.to_single_token(" Paris")


def test_ioi_logit_difference_is_positive(smol):
    logits = smol(IOI)
    diff = logits[0, -1, smol.to_single_token(" Mary")] - logits[0, -1, smol.to_single_token(" John")]
    assert diff > 3.0


def test_logits_bit_identical_to_hf_and_hooked_path_close_to_eager(smol):
    tokens = smol.to_tokens(IOI)
    with torch.no_grad():
        assert torch.equal(smol(tokens), smol.hf(tokens).logits)
    eager = ms.load("smollm2-135m", attn_implementation="eager")
    with torch.no_grad():
        eager_logits = eager.hf(tokens).logits
    logits, cache = smol.run_with_cache(tokens)
    assert (logits - eager_logits).abs().max() < 1e-4
    torch.testing.assert_close(cache["blocks.12.attn.pattern"].sum(-1), torch.ones(1, 9, tokens.shape[1]))
    torch.testing.assert_close(cache["blocks.12.resid_mid"] + cache["blocks.12.mlp.out"],
                               cache["blocks.12.resid_post"], atol=1e-4, rtol=0)


@pytest.mark.parametrize("side", ["left", "right"])
def test_batched_prompts_of_different_lengths(smol, side):
    prompts = [IOI, "The capital of France is", "Hello"]
    tokens, mask = smol.to_tokens(prompts, padding_side=side, return_mask=True)
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
