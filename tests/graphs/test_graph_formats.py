"""Transcoder sets on disk: circuit-tracer's layout (config.yaml + layer_<l>.safetensors, its
key names and orientations) and SAELens's, each read back to identical weights and the same
attribution graph; a circuit-tracer folder written by another tool (no mechscope section)
reads by its own fields."""

from __future__ import annotations

import pytest
import torch
import yaml
from conftest import build_tiny
from safetensors.torch import load_file

import mechscope as ms


@pytest.fixture(scope="module")
def model():
    return build_tiny("llama").model


def _same(a: ms.TranscoderSet, b: ms.TranscoderSet) -> None:
    assert a.layers == b.layers
    for layer in a.layers:
        assert a[layer].cfg == b[layer].cfg
        for name, value in a[layer].state_dict().items():
            torch.testing.assert_close(b[layer].state_dict()[name], value, rtol=0, atol=0, msg=f"{layer} {name}")


TOPK = {"architecture": "topk", "k": 3, "skip_connection": True}
JUMPRELU = {"architecture": "jumprelu", "skip_connection": True}


@pytest.mark.parametrize(("layout", "kind"), [("circuit-tracer", TOPK), ("circuit-tracer", JUMPRELU),
                                              ("saelens", JUMPRELU), ("saelens", {"architecture": "relu"})])
def test_round_trip(model, tmp_path, layout, kind):
    transcoders = ms.TranscoderSet.fresh(model, d_sae=16, seed=1, **kind)
    if kind["architecture"] == "jumprelu":
        with torch.no_grad():
            for tc in transcoders:
                tc.threshold.uniform_(0, 0.1, generator=torch.Generator().manual_seed(2))
    ms.save_transcoders(transcoders, tmp_path / "tc", layout=layout)
    loaded = ms.load_transcoders(tmp_path / "tc")
    _same(transcoders, loaded)
    tokens = torch.arange(3, 10)[None]
    a = ms.attribution_graph(model, transcoders, tokens, max_logits=2, progress=False)
    b = ms.attribution_graph(model, loaded, tokens, max_logits=2, progress=False)
    assert torch.equal(a.adjacency, b.adjacency)


def test_circuit_tracer_files_hold_its_names_and_orientations(model, tmp_path):
    transcoders = ms.TranscoderSet.fresh(model, d_sae=16, k=3, skip_connection=True, seed=1, model_name="tiny-llama")
    folder = ms.save_transcoders(transcoders, tmp_path / "tc")
    config = yaml.safe_load((folder / "config.yaml").read_text())
    assert config["model_kind"] == "transcoder_set" and config["feature_input_hook"] == "ln2.hook_normalized"
    assert config["feature_output_hook"] == "hook_mlp_out" and config["activation"] == "topk" and config["k"] == 3
    assert config["transcoders"] == [f"layer_{l}.safetensors" for l in range(model.cfg.n_layers)]
    tensors = load_file(str(folder / "layer_1.safetensors"))
    assert set(tensors) == {"W_enc", "W_dec", "b_enc", "b_dec", "W_skip"}
    assert tensors["W_enc"].shape == (16, 64) and tensors["W_dec"].shape == (16, 64)
    x = torch.randn(5, 64)
    torch.testing.assert_close(x @ tensors["W_skip"].T, x @ transcoders[1].W_skip.detach())  # circuit-tracer's skip
    torch.testing.assert_close(x @ tensors["W_enc"].T + tensors["b_enc"], transcoders[1].pre_activation(x).detach())
    del config["mechscope"]  # as another tool would write it
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    _same(transcoders, ms.load_transcoders(folder))


def test_bad_folders_are_refused(model, tmp_path):
    with pytest.raises(ms.MechscopeError, match="holds no transcoder set"):
        ms.load_transcoders(tmp_path)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"model_kind": "cross_layer_transcoder"}))
    with pytest.raises(ms.MechscopeError, match="only 'transcoder_set'"):
        ms.load_transcoders(tmp_path)
    with pytest.raises(ms.SelectionError, match="layout"):
        ms.save_transcoders(ms.TranscoderSet.fresh(model, d_sae=4, k=1), tmp_path / "x", layout="npz")
    with pytest.raises(ms.MechscopeError, match="SAELens has no topk transcoder"):
        ms.save_transcoders(ms.TranscoderSet.fresh(model, d_sae=4, k=1), tmp_path / "y", layout="saelens")
