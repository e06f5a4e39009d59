"""SAE file layouts: each library's files (exact tensor and config names) load into a mechscope SAE
whose encode/decode match that library's own forward formula, written out by hand here."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from mechscope.errors import MechscopeError, MechscopeWarning, SelectionError
from mechscope.sae.formats import detect_format, load_sae, save_saelens
from mechscope.sae.modules import SAE, SAEConfig

D_IN, D_SAE, K = 16, 48, 5


def rand(*shape, seed=0):
    g = torch.Generator().manual_seed(seed + sum(shape))
    return torch.randn(*shape, generator=g)


def inputs(d=D_IN):
    return rand(3, 7, d, seed=99) * 2


def topk_dense(acts, k):
    top = acts.topk(k, dim=-1)
    return torch.zeros_like(acts).scatter(-1, top.indices, top.values)


def check(sae, x, acts, recon):
    got = sae.encode(x)
    torch.testing.assert_close(got, acts, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sae.decode(got), recon, rtol=1e-5, atol=1e-5)
    assert (acts != 0).any() and (acts == 0).any()  # the test is not vacuous


# --------------------------------------------------------------------------- SAELens


def write_saelens(folder, cfg, tensors):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cfg.json").write_text(json.dumps(cfg))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "sae_weights.safetensors"))
    return folder


def saelens_tensors(threshold=False):
    t = {"W_enc": rand(D_IN, D_SAE), "b_enc": rand(D_SAE) * 0.5, "W_dec": rand(D_SAE, D_IN), "b_dec": rand(D_IN)}
    if threshold:
        t["threshold"] = rand(D_SAE).abs()
    return t


def test_saelens_v6_jumprelu(tmp_path):
    t = saelens_tensors(threshold=True)
    cfg = {"architecture": "jumprelu", "d_in": D_IN, "d_sae": D_SAE, "dtype": "float32", "device": "cpu",
               "apply_b_dec_to_input": True, "normalize_activations": "none", "reshape_activations": "none",
               "metadata": {"model_name": "gpt2", "hook_name": "blocks.3.resid_post", "sae_lens_version": "6.5.0"}}
    sae = load_sae(write_saelens(tmp_path / "s", cfg, t))
    assert detect_format(tmp_path / "s") == "saelens"
    assert (sae.cfg.architecture, sae.cfg.hook_name, sae.cfg.model_name) == ("jumprelu", "blocks.3.resid_post", "gpt2")
    x = inputs()
    pre = (x - t["b_dec"]) @ t["W_enc"] + t["b_enc"]
    acts = torch.relu(pre) * (pre > t["threshold"])
    check(sae, x, acts, acts @ t["W_dec"] + t["b_dec"])


def test_saelens_old_topk_with_activation_fn_kwargs(tmp_path):
    t = saelens_tensors()
    t["scaling_factor"] = rand(D_SAE).abs() + 0.5
    cfg = {"architecture": "topk", "d_in": D_IN, "d_sae": D_SAE, "activation_fn_str": "topk",
               "activation_fn_kwargs": {"k": K}, "apply_b_dec_to_input": False, "finetuning_scaling_factor": True,
               "hook_name": "blocks.2.hook_resid_pre", "hook_layer": 2, "hook_head_index": None, "model_name": "pythia",
               "normalize_activations": "none", "dtype": "float32", "device": "cpu", "context_size": 128}
    sae = load_sae(write_saelens(tmp_path / "s", cfg, t), d_in=D_IN)
    assert (sae.cfg.k, sae.cfg.pre_encoder_bias, sae.cfg.hook_name) == (K, False, "blocks.2.hook_resid_pre")
    x = inputs()
    acts = topk_dense(torch.relu(x @ t["W_enc"] + t["b_enc"]), K)
    check(sae, x, acts, (acts * t["scaling_factor"]) @ t["W_dec"] + t["b_dec"])


def test_saelens_v6_topk_rescaled_by_decoder_norm(tmp_path):
    t = saelens_tensors()
    cfg = {"architecture": "topk", "d_in": D_IN, "d_sae": D_SAE, "k": K, "rescale_acts_by_decoder_norm": True,
           "apply_b_dec_to_input": True, "metadata": {"hook_name": "blocks.0.hook_resid_post"}}
    sae = load_sae(write_saelens(tmp_path / "s", cfg, t))
    x = inputs()
    norms = t["W_dec"].norm(dim=-1)
    acts = topk_dense(torch.relu(((x - t["b_dec"]) @ t["W_enc"] + t["b_enc"]) * norms), K)  # SAELens 6 TopK
    recon = (acts / norms) @ t["W_dec"] + t["b_dec"]
    torch.testing.assert_close(sae.decode(sae.encode(x)), recon, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sae.encode(x) != 0, acts != 0)


def test_saelens_oldest_cfg_without_architecture_is_relu(tmp_path):
    t = saelens_tensors()
    cfg = {"d_in": D_IN, "d_sae": D_SAE, "hook_point": "blocks.1.hook_resid_pre", "model_name": "gpt2-small",
               "normalize_activations": False, "dtype": "torch.float32"}
    sae = load_sae(write_saelens(tmp_path / "s", cfg, t))
    assert sae.cfg.architecture == "relu" and sae.cfg.pre_encoder_bias
    x = inputs()
    acts = torch.relu((x - t["b_dec"]) @ t["W_enc"] + t["b_enc"])
    check(sae, x, acts, acts @ t["W_dec"] + t["b_dec"])


@pytest.mark.parametrize("arch", ["relu", "topk", "jumprelu", "batchtopk"])
def test_saelens_round_trip(tmp_path, arch):
    k = K if arch in ("topk", "batchtopk") else None
    sae = SAE(SAEConfig(d_in=D_IN, d_sae=D_SAE, architecture=arch, k=k, pre_encoder_bias=arch != "jumprelu",
                        hook_name="blocks.1.resid_post", model_name="m"))
    with torch.no_grad():
        for name, p in sae.named_parameters():
            p.copy_(rand(*p.shape, seed=len(name)))
    save_saelens(sae, tmp_path / "out")
    back = load_sae(tmp_path / "out")
    assert back.cfg == sae.cfg
    for name, p in sae.named_parameters():
        if arch in ("relu", "topk") and name == "threshold":
            continue  # not part of those architectures, not written
        assert torch.equal(getattr(back, name), p), name


def test_saelens_round_trip_skip_transcoder(tmp_path):
    sae = SAE(SAEConfig(d_in=D_IN, d_sae=D_SAE, architecture="jumprelu", d_out=12, skip_connection=True,
                        hook_name="blocks.0.ln2.out", output_hook_name="blocks.0.mlp.out"))
    with torch.no_grad():
        for name, p in sae.named_parameters():
            p.copy_(rand(*p.shape, seed=len(name)))
    back = load_sae(save_saelens(sae, tmp_path / "tc"))
    assert back.cfg == sae.cfg
    for name, p in sae.named_parameters():
        assert torch.equal(getattr(back, name), p), name


def test_saelens_shape_errors(tmp_path):
    t = saelens_tensors()
    cfg = {"architecture": "standard", "d_in": D_IN, "d_sae": D_SAE}
    folder = write_saelens(tmp_path / "s", cfg, t)
    with pytest.raises(SelectionError, match="cfg.json says d_in = 16 but the model's d_in is 20"):
        load_sae(folder, d_in=20)
    bad = dict(t, W_dec=rand(D_SAE, D_IN + 1))
    with pytest.raises(SelectionError, match="W_dec has shape"):
        load_sae(write_saelens(tmp_path / "b", cfg, bad))
    with pytest.raises(SelectionError, match=r"W_enc has shape \(20, 48\) but cfg.json says d_in is 16"):
        load_sae(write_saelens(tmp_path / "c", dict(cfg, d_in=16), dict(t, W_enc=rand(20, D_SAE))))


def test_saelens_transposed_w_dec_is_accepted(tmp_path):
    t = saelens_tensors()
    folder = write_saelens(tmp_path / "s", {"architecture": "standard", "d_in": D_IN, "d_sae": D_SAE},
                           dict(t, W_dec=t["W_dec"].T.contiguous()))
    assert torch.equal(load_sae(folder).W_dec, t["W_dec"])


def test_corrupt_and_missing_files(tmp_path):
    folder = write_saelens(tmp_path / "s", {"architecture": "standard", "d_in": D_IN, "d_sae": D_SAE}, saelens_tensors())
    (folder / "sae_weights.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(MechscopeError, match="corrupt"):
        load_sae(folder)
    (folder / "cfg.json").write_text("{not json")
    with pytest.raises(MechscopeError, match="cannot read SAE config"):
        load_sae(folder)
    (tmp_path / "empty").mkdir()
    with pytest.raises(MechscopeError, match="no SAE weights found"):
        load_sae(tmp_path / "empty")
    with pytest.raises(MechscopeError, match="does not exist"):
        load_sae(tmp_path / "nowhere")
    (tmp_path / "g").mkdir()
    (tmp_path / "g" / "params.npz").write_bytes(b"PK\x03\x04broken")
    with pytest.raises(MechscopeError, match="corrupt"):
        load_sae(tmp_path / "g")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "ae.pt").write_bytes(b"not a torch file")
    with pytest.raises(MechscopeError, match="cannot read SAE weights"):
        load_sae(tmp_path / "d")
    with pytest.raises(MechscopeError, match="lacks tensor"):
        load_sae(write_saelens(tmp_path / "m", {"architecture": "jumprelu", "d_in": D_IN, "d_sae": D_SAE},
                               saelens_tensors()))


def test_torch_file_with_arbitrary_pickle_is_refused(tmp_path):
    (tmp_path / "d").mkdir()
    torch.save({"encoder.weight": rand(D_SAE, D_IN), "extra": object()}, tmp_path / "d" / "ae.pt")
    with pytest.raises(MechscopeError, match="plain tensors"):
        load_sae(tmp_path / "d")


# --------------------------------------------------------------------------- Gemma Scope


def test_gemma_scope(tmp_path):
    p = {k: v.numpy() for k, v in saelens_tensors(threshold=True).items()}
    np.savez(tmp_path / "params.npz", **p)
    sae = load_sae(tmp_path, d_in=D_IN)
    assert detect_format(tmp_path) == "gemma_scope" and sae.cfg.architecture == "jumprelu"
    x = inputs()
    W_enc, b_enc, W_dec, b_dec, thr = (torch.from_numpy(p[k]) for k in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"))
    pre = x @ W_enc + b_enc  # no b_dec subtraction
    acts = torch.relu(pre) * (pre > thr)
    check(sae, x, acts, acts @ W_dec + b_dec)
    assert torch.equal(load_sae(tmp_path / "params.npz").W_enc, sae.W_enc)  # the file path works too
    with pytest.raises(SelectionError, match=r"W_enc has shape \(16, 48\) but the model's d_in is 32"):
        load_sae(tmp_path, d_in=32)


# --------------------------------------------------------------------------- sparsify


def write_sparsify(folder, cfg, tensors):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cfg.json").write_text(json.dumps(cfg))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "sae.safetensors"))
    return folder


SPARSIFY_CFG = {"activation": "topk", "expansion_factor": 3, "normalize_decoder": True, "num_latents": 0, "k": K,
                    "multi_topk": False, "skip_connection": False, "transcode": False, "d_in": D_IN}


def test_sparsify_topk(tmp_path):
    t = {"encoder.weight": rand(D_SAE, D_IN), "encoder.bias": rand(D_SAE), "W_dec": rand(D_SAE, D_IN),
         "b_dec": rand(D_IN)}
    sae = load_sae(write_sparsify(tmp_path / "layers.3", SPARSIFY_CFG, t), hook_name="blocks.3.resid_post")
    assert detect_format(tmp_path / "layers.3") == "sparsify"
    assert (sae.cfg.k, sae.cfg.d_sae, sae.cfg.hook_name) == (K, D_SAE, "blocks.3.resid_post")
    x = inputs()
    # sparsify: x - b_dec (not for transcoders), relu(linear), top-k; decode W_dec rows + b_dec
    acts = topk_dense(torch.relu(torch.nn.functional.linear(x - t["b_dec"], t["encoder.weight"], t["encoder.bias"])), K)
    check(sae, x, acts, acts @ t["W_dec"] + t["b_dec"])


def test_sparsify_skip_transcoder(tmp_path):
    t = {"encoder.weight": rand(D_SAE, D_IN), "encoder.bias": rand(D_SAE), "W_dec": rand(D_SAE, D_IN),
         "b_dec": rand(D_IN), "W_skip": rand(D_IN, D_IN, seed=7)}
    cfg = dict(SPARSIFY_CFG, num_latents=D_SAE, transcode=True, skip_connection=True)
    sae = load_sae(write_sparsify(tmp_path / "tc", cfg, t))
    assert sae.cfg.skip_connection and not sae.cfg.pre_encoder_bias
    x = inputs()
    acts = topk_dense(torch.relu(x @ t["encoder.weight"].T + t["encoder.bias"]), K)
    check_out = acts @ t["W_dec"] + t["b_dec"] + x @ t["W_skip"].mT
    torch.testing.assert_close(sae.encode(x), acts, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sae(x), check_out, rtol=1e-5, atol=1e-5)


def test_sparsify_cfg_disagrees(tmp_path):
    t = {"encoder.weight": rand(D_SAE, D_IN), "encoder.bias": rand(D_SAE), "W_dec": rand(D_SAE, D_IN),
         "b_dec": rand(D_IN)}
    with pytest.raises(SelectionError, match="implies 64 latents"):
        load_sae(write_sparsify(tmp_path / "a", dict(SPARSIFY_CFG, expansion_factor=4), t))
    with pytest.raises(SelectionError, match="says d_in = 16 but the model's d_in is 8"):
        load_sae(write_sparsify(tmp_path / "b", SPARSIFY_CFG, t), d_in=8)


# --------------------------------------------------------------------------- dictionary_learning


def write_dl(folder, state, trainer=None):
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(state, folder / "ae.pt")
    if trainer is not None:
        (folder / "config.json").write_text(json.dumps({"trainer": trainer, "buffer": {"d_submodule": D_IN}}))
    return folder


def test_dictionary_learning_autoencoder(tmp_path):
    s = {"bias": rand(D_IN), "encoder.weight": rand(D_SAE, D_IN), "encoder.bias": rand(D_SAE),
         "decoder.weight": rand(D_IN, D_SAE)}
    sae = load_sae(write_dl(tmp_path / "ae", s, {"dict_class": "AutoEncoder", "activation_dim": D_IN,
                                                   "dict_size": D_SAE, "lm_name": "EleutherAI/pythia-70m"}))
    assert detect_format(tmp_path / "ae") == "dictionary_learning" and sae.cfg.model_name == "EleutherAI/pythia-70m"
    x = inputs()
    acts = torch.relu(torch.nn.functional.linear(x - s["bias"], s["encoder.weight"], s["encoder.bias"]))
    check(sae, x, acts, torch.nn.functional.linear(acts, s["decoder.weight"]) + s["bias"])


def test_dictionary_learning_topk_and_batchtopk(tmp_path):
    s = {"k": torch.tensor(K, dtype=torch.int), "threshold": torch.tensor(0.7), "encoder.weight": rand(D_SAE, D_IN),
         "encoder.bias": rand(D_SAE), "decoder.weight": rand(D_IN, D_SAE), "b_dec": rand(D_IN)}
    x = inputs()
    post_relu = torch.relu(torch.nn.functional.linear(x - s["b_dec"], s["encoder.weight"], s["encoder.bias"]))

    with pytest.warns(MechscopeWarning, match="AutoEncoderTopK"):  # no config.json: the class is assumed
        topk = load_sae(write_dl(tmp_path / "topk", s))
    acts = topk_dense(post_relu, K)
    check(topk, x, acts, torch.nn.functional.linear(acts, s["decoder.weight"]) + s["b_dec"])

    batch = load_sae(write_dl(tmp_path / "btk", s, {"dict_class": "BatchTopKSAE", "k": K}))
    assert batch.cfg.architecture == "batchtopk" and not batch.training
    acts = post_relu * (post_relu > s["threshold"])  # BatchTopKSAE.encode(use_threshold=True)
    check(batch, x, acts, torch.nn.functional.linear(acts, s["decoder.weight"]) + s["b_dec"])


def test_dictionary_learning_jumprelu_and_errors(tmp_path):
    s = {"W_enc": rand(D_IN, D_SAE), "b_enc": rand(D_SAE), "W_dec": rand(D_SAE, D_IN), "b_dec": rand(D_IN),
         "threshold": rand(D_SAE).abs()}
    sae = load_sae(write_dl(tmp_path / "jr", s))
    x = inputs()
    pre = x @ s["W_enc"] + s["b_enc"]  # apply_b_dec_to_input = False
    acts = torch.relu(pre * (pre > s["threshold"]))
    check(sae, x, acts, acts @ s["W_dec"] + s["b_dec"])

    bad = {"bias": rand(D_IN), "encoder.weight": rand(D_SAE, D_IN), "encoder.bias": rand(D_SAE),
           "decoder.weight": rand(D_IN + 2, D_SAE)}
    with pytest.raises(SelectionError, match="decoder.weight has shape"):
        load_sae(write_dl(tmp_path / "bad", bad))
    gated = {"decoder_bias": rand(D_IN), "r_mag": rand(D_SAE), "gate_bias": rand(D_SAE)}
    with pytest.raises(MechscopeError, match="gated"):
        load_sae(write_dl(tmp_path / "gated", gated))
