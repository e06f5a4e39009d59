"""model.cfg and weight views: shapes, GQA expansion, tied embeddings, storage sharing."""

from __future__ import annotations

import torch

import mechscope as ms


def test_config_reads_every_family(tiny):
    cfg, hf = tiny.model.cfg, tiny.model.hf.config
    assert cfg.n_layers == 2 and cfg.d_model == 64 and cfg.n_heads == 4 and cfg.d_vocab == 97
    assert cfg.family == hf.model_type
    assert cfg.d_head == getattr(hf, "head_dim", None) or cfg.d_head == 16
    expected_kv = getattr(hf, "num_key_value_heads", None) or cfg.n_heads
    assert cfg.n_kv_heads == expected_kv
    assert cfg.parallel_attn_mlp == (tiny.family in ("gpt_neox", "gptj"))
    assert cfg.normalization == ("LayerNorm" if tiny.family.startswith("gpt") else "RMSNorm")


def test_weight_shapes(tiny):
    model = tiny.model
    cfg = model.cfg
    assert model.W_Q[0].shape == (cfg.n_heads, cfg.d_model, cfg.d_head)
    assert model.W_K[0].shape == (cfg.n_kv_heads, cfg.d_model, cfg.d_head)
    assert model.weights(expand_kv=True).W_K[0].shape == (cfg.n_heads, cfg.d_model, cfg.d_head)
    assert model.W_O[1].shape == (cfg.n_heads, cfg.d_head, cfg.d_model)
    assert model.W_O[1, 2].shape == (cfg.d_head, cfg.d_model)
    assert model.W_O[:].shape == (cfg.n_layers, cfg.n_heads, cfg.d_head, cfg.d_model)
    assert model.W_in[0].shape == (cfg.d_model, cfg.d_mlp)
    assert model.W_out[0].shape == (cfg.d_mlp, cfg.d_model)
    assert (model.W_gate is None) == (not cfg.gated_mlp)
    assert model.W_E.shape == (cfg.d_vocab, cfg.d_model)
    assert model.W_U.shape == (cfg.d_model, cfg.d_vocab)
    assert (model.W_pos is not None) == (cfg.positional == "learned")


def test_gqa_expansion_repeats_kv_heads(tiny):
    model = tiny.model
    groups = model.cfg.n_heads // model.cfg.n_kv_heads
    expanded = model.weights(expand_kv=True).W_V[1]
    for head in range(model.cfg.n_heads):
        assert torch.equal(expanded[head], model.W_V[1][head // groups])


def test_unfolded_views_share_storage_with_parameters(tiny):
    model = tiny.model
    w_o = model.W_O[0]
    param = model.hf.get_submodule(f"{model.adapter.layers}.0.{model.adapter.components.o.path}").weight
    assert w_o.untyped_storage().data_ptr() == param.untyped_storage().data_ptr()


def test_tied_embeddings():
    from conftest import build_tiny

    model = build_tiny("gpt2").model
    assert model.cfg.tied_embeddings
    assert torch.equal(model.W_U, model.W_E.T)


def test_cache_stores_aliases_once(tiny):
    _, cache = tiny.model.run_with_cache(tiny.tokens, ["blocks.0.resid_post", "blocks.1.resid_pre"])
    one = cache["blocks.0.resid_post"]
    assert cache.nbytes == one.numel() * one.element_size()


def test_cache_positions_device_dtype(tiny):
    _, cache = tiny.model.run_with_cache(tiny.tokens, "blocks.*.attn.pattern", positions=-1, dtype=torch.float16)
    pattern = cache["blocks.1.attn.pattern"]
    assert pattern.shape == (3, tiny.model.cfg.n_heads, 12) and pattern.dtype == torch.float16
    stacked = cache.stack("blocks.*.attn.pattern")
    assert stacked.shape == (2, 3, tiny.model.cfg.n_heads, 12)


def test_hook_point_metadata(tiny):
    point = tiny.model.hook_point("blocks.1.attn.pattern")
    assert isinstance(point, ms.HookPoint) and point.layer == 1 and point.layout == "bhqk" and point.pos_dim == 2
