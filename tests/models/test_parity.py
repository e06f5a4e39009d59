"""Logits: bit-identical to HF with no hooks; within 1e-5 of HF eager on the hooked path."""

from __future__ import annotations

import torch

ATOL = 1e-5


def test_no_hooks_is_bit_identical_to_hf(tiny):
    with torch.no_grad():
        ours = tiny.model(tiny.tokens)
        theirs = tiny.reference(tiny.tokens).logits
    assert torch.equal(ours, theirs)


def test_hooked_path_matches_hf_eager(tiny):
    with torch.no_grad():
        eager = tiny.eager(tiny.tokens).logits
    logits, cache = tiny.model.run_with_cache(tiny.tokens)  # every name: explicit attention everywhere
    assert (logits - eager).abs().max() <= ATOL
    cfg = tiny.model.cfg
    for layer in range(cfg.n_layers):
        # Guard that the explicit path ran: a real pattern, and attn.out rebuilt from z and W_O.
        pattern = cache[f"blocks.{layer}.attn.pattern"]
        assert pattern.shape == (3, cfg.n_heads, 12, 12)
        torch.testing.assert_close(pattern.sum(-1), torch.ones(3, cfg.n_heads, 12), atol=1e-6, rtol=0)
        assert torch.all(pattern.triu(1) == 0), "attention must stay causal"
        z = cache[f"blocks.{layer}.attn.z"]
        projected = torch.einsum("bphe,hed->bpd", z, tiny.model.W_O[layer]) + tiny.model.b_O[layer]
        if tiny.model.adapter.attn_out_norm is None:
            torch.testing.assert_close(projected, cache[f"blocks.{layer}.attn.out"], atol=ATOL, rtol=0)
        else:
            norm = tiny.model.hf.get_submodule(f"{tiny.model.adapter.layers}.{layer}.{tiny.model.adapter.attn_out_norm}")
            torch.testing.assert_close(norm(projected), cache[f"blocks.{layer}.attn.out"], atol=ATOL, rtol=0)


def test_padded_batch_matches_prompts_run_alone(tiny):
    """Left padding: each prompt's real positions give its unpadded logits, and real queries
    give padding no attention. Also a batch padded on both sides, where pads precede and follow
    the real tokens. (Right padding alone cannot fail this check under causal attention, since
    real tokens never see later positions; right-padded readers of "the last token" are tested
    in tests/analysis/test_padded_batches.py.)"""
    spans = {"left": [(0, 12), (5, 12), (3, 12)], "both": [(0, 12), (2, 9), (1, 10)]}
    for rows in spans.values():
        mask = torch.zeros(3, 12, dtype=torch.long)
        for i, (start, stop) in enumerate(rows):
            mask[i, start:stop] = 1
        with torch.no_grad():
            batched = tiny.model(tiny.tokens, mask)
            for i in range(len(rows)):
                real = mask[i].bool()
                alone = tiny.model(tiny.tokens[i, real][None])
                torch.testing.assert_close(batched[i, real], alone[0], atol=ATOL, rtol=0)
        _, cache = tiny.model.run_with_cache(tiny.tokens, "blocks.0.attn.pattern", attention_mask=mask)
        pattern = cache["blocks.0.attn.pattern"]
        for i in range(len(rows)):  # no attention to padding from real queries
            real = mask[i].bool()
            assert pattern[i][:, real][:, :, ~real].abs().sum() == 0


def test_model_sharing_the_config_object_keeps_working():
    """Wrapping one model switches the shared config's attention name; its twin must not break."""
    import transformers as tf

    import mechscope as ms

    config = tf.LlamaConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                            intermediate_size=96, vocab_size=97)
    torch.manual_seed(0)
    first, twin = tf.LlamaForCausalLM(config).eval(), tf.LlamaForCausalLM(config).eval()
    tokens = torch.randint(0, 97, (2, 9))
    with torch.no_grad():
        before = twin(tokens).logits
        model = ms.HookedModel(first)
        with model.hooks({"blocks.*.attn.pattern": lambda p, ctx: None}):
            model(tokens)
            after = twin(tokens).logits
    assert torch.equal(before, after)
