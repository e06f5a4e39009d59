"""Every family: the named activations fit together as the architecture says (fp32, 1e-5)."""

from __future__ import annotations

import torch

ATOL = 1e-5


def close(a, b, atol=ATOL):
    torch.testing.assert_close(a, b, atol=atol, rtol=0)


def test_residual_decomposition(tiny):
    model = tiny.model
    _, cache = model.run_with_cache(tiny.tokens)
    for l in range(model.cfg.n_layers):
        pre, attn, mlp, post = (cache[f"blocks.{l}.{s}"] for s in ("resid_pre", "attn.out", "mlp.out", "resid_post"))
        if model.cfg.parallel_attn_mlp:
            assert f"blocks.{l}.resid_mid" not in model.names
            close(pre + attn + mlp, post)
        else:
            mid = cache[f"blocks.{l}.resid_mid"]
            close(pre + attn, mid)
            close(mid + mlp, post)
        if l + 1 < model.cfg.n_layers:
            assert torch.equal(post, cache[f"blocks.{l + 1}.resid_pre"])
    first = cache["embed"] + (cache["pos_embed"] if "pos_embed" in cache else 0)
    close(first, cache["blocks.0.resid_pre"])


def test_heads_sum_to_attention_output(tiny):
    model = tiny.model
    _, cache = model.run_with_cache(tiny.tokens)
    for l in range(model.cfg.n_layers):
        head_out = cache[f"blocks.{l}.attn.head_out"]
        assert head_out.shape == (3, 12, model.cfg.n_heads, model.cfg.d_model)
        bias = model.b_O[l] if model.adapter.attn_out_norm is None else 0
        close(head_out.sum(2) + bias, cache[f"blocks.{l}.attn.out"])


def test_z_from_pattern_and_values(tiny):
    model = tiny.model
    _, cache = model.run_with_cache(tiny.tokens)
    groups = model.cfg.n_heads // model.cfg.n_kv_heads
    for l in range(model.cfg.n_layers):
        v = cache[f"blocks.{l}.attn.v"].repeat_interleave(groups, dim=2)
        z = torch.einsum("bhqk,bkhd->bqhd", cache[f"blocks.{l}.attn.pattern"], v)
        close(z, cache[f"blocks.{l}.attn.z"])
        scores = cache[f"blocks.{l}.attn.scores"]
        close(scores.softmax(-1), cache[f"blocks.{l}.attn.pattern"], atol=1e-6)


def test_values_from_weights(tiny):
    """v = (input of attention) @ W_V + b_V, exercising each layout (Conv1D, fused, GQA)."""
    model = tiny.model
    _, cache = model.run_with_cache(tiny.tokens)
    reads = "ln1.out" if "blocks.0.ln1.out" in model.names else "resid_pre"
    for l in range(model.cfg.n_layers):
        x = cache[f"blocks.{l}.{reads}"]
        v = torch.einsum("bpd,hde->bphe", x, model.W_V[l]) + model.b_V[l]
        close(v, cache[f"blocks.{l}.attn.v"])
        if model.cfg.positional == "learned":  # no rotary: q and k are plain projections too
            close(torch.einsum("bpd,hde->bphe", x, model.W_Q[l]) + model.b_Q[l], cache[f"blocks.{l}.attn.q"])
            close(torch.einsum("bpd,hde->bphe", x, model.W_K[l]) + model.b_K[l], cache[f"blocks.{l}.attn.k"])


def test_mlp_from_weights(tiny):
    model = tiny.model
    _, cache = model.run_with_cache(tiny.tokens)
    for l in range(model.cfg.n_layers):
        post = cache[f"blocks.{l}.mlp.post"]
        down = post @ model.W_out[l] + model.b_out[l]
        if model.adapter.block_sites["mlp.out"].path == "mlp":  # no post-MLP norm
            close(down, cache[f"blocks.{l}.mlp.out"])
        reads = cache[f"blocks.{l}.ln2.out"] if f"blocks.{l}.ln2.out" in model.names else (
            cache[f"blocks.{l}.ln1.out"] if f"blocks.{l}.ln1.out" in model.names else cache[f"blocks.{l}.resid_mid"])
        gate_or_in = model.W_gate[l] if model.cfg.gated_mlp else model.W_in[l]
        gate_bias = model.b_gate[l] if model.cfg.gated_mlp else model.b_in[l]
        close(reads @ gate_or_in + gate_bias, cache[f"blocks.{l}.mlp.pre"])


def test_logits_from_final_norm_and_unembedding(tiny):
    model = tiny.model
    logits, cache = model.run_with_cache(tiny.tokens)
    raw = cache["ln_final.out"] @ model.W_U + model.b_U
    cap = getattr(model.hf.config, model.adapter.final_softcap_attr or "", None)
    if cap:
        raw = torch.tanh(raw / cap) * cap
    close(raw, logits)
    close(model.unembed(cache[f"blocks.{model.cfg.n_layers - 1}.resid_post"]).detach(), logits)


def test_folded_weights_read_normalised_input(tiny):
    model = tiny.model
    layout = model.adapter.components
    _, cache = model.run_with_cache(tiny.tokens)
    folded = model.weights(fold_norm=True, expand_kv=True)
    x = cache["blocks.1.resid_pre"]
    if layout.ln1 is None:  # OLMo 2: nothing precedes attention, so the folded weights read x itself
        normalised = x
    elif model.adapter.norm.kind == "rms":
        normalised = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + _eps(model, layout.ln1))
    else:
        centred = x - x.mean(-1, keepdim=True)
        normalised = centred * torch.rsqrt(centred.pow(2).mean(-1, keepdim=True) + _eps(model, layout.ln1))
    v = torch.einsum("bpd,hde->bphe", normalised, folded.W_V[1]) + folded.b_V[1]
    groups = model.cfg.n_heads // model.cfg.n_kv_heads
    close(v, cache["blocks.1.attn.v"].repeat_interleave(groups, dim=2), atol=2e-5)


def _eps(model, norm_path):
    from mechscope.models.norms import norm_eps

    return norm_eps(model.hf.get_submodule(f"{model.adapter.layers}.1.{norm_path}"))


def test_names_in_execution_order(tiny):
    """Hook firing order of a full forward equals model.names."""
    fired = []
    with tiny.model.hooks({"*": lambda x, ctx: fired.append(ctx.name)}):
        with torch.no_grad():
            tiny.model(tiny.tokens)
    assert fired == tiny.model.names


def test_every_activation_has_the_batch_axis(tiny):
    """Broadcast activations (GPT-2's position embeddings) are expanded to the batch."""
    _, cache = tiny.model.run_with_cache(tiny.tokens)
    for name, tensor in cache.items():
        assert tensor.shape[0] == 3, name


def test_batch_expansion_is_scoped_to_the_forward(tiny):
    """After a batched forward, a hook firing outside one (unembed) keeps its own batch size."""
    model = tiny.model
    with model.hooks({"ln_final.out": lambda x, ctx: None}), torch.no_grad():
        model(tiny.tokens)  # batch 3
        out = model.unembed(torch.randn(1, 12, model.cfg.d_model))
    assert out.shape[0] == 1
