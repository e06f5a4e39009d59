"""SAE inputs that crashed with raw errors or were silently reinterpreted (issue 11, "Others
found", silent case 3 and "Display of tokens"), each now a correct result or a clear
`MechscopeError`."""

from __future__ import annotations

import json
import re

import pytest
import torch
from conftest import build_tiny

import mechscope as ms
from mechscope.data.harvest import harvest_all, token_width
from mechscope.errors import OutputPathError
from mechscope.models.tokens import token_texts
from mechscope.sae.train import init_sae


@pytest.fixture(scope="module")
def tiny_llama():
    return build_tiny("llama").model  # 2 layers, d_model 64, 4 heads of 16


def _sae(d_in: int, hook: str = "", arch: str = "relu", **cfg) -> ms.SAE:
    return init_sae(ms.SAE(ms.SAEConfig(d_in=d_in, d_sae=32, architecture=arch, hook_name=hook, **cfg)), seed=1)


def _tokens(n: int = 3, length: int = 10) -> torch.Tensor:
    return torch.randint(3, 97, (n, length), generator=torch.Generator().manual_seed(0))


def test_harvesting_a_per_head_name_flattens_its_heads(tiny_llama):
    """Issue 11: ``harvest --hook blocks.5.attn.z`` raised IndexError on the token mask."""
    tokens = _tokens()
    got = harvest_all(tiny_llama, ["blocks.0.attn.z"], tokens)["blocks.0.attn.z"]
    _, cache = tiny_llama.run_with_cache(tokens, "blocks.0.attn.z")
    assert token_width(tiny_llama.hook_point("blocks.0.attn.z")) == 64
    torch.testing.assert_close(got, cache["blocks.0.attn.z"][:, 1:].reshape(-1, 4 * 16))  # position 0 left out
    with pytest.raises(ms.SelectionError, match=r"layout 'bhqk'"):
        harvest_all(tiny_llama, ["blocks.0.attn.pattern"], tokens)
    with pytest.raises(ms.SelectionError, match="one exact name"):
        harvest_all(tiny_llama, ["blocks.*.resid_post"], tokens)


def test_an_sae_on_a_per_head_name_splices_and_evaluates(tiny_llama):
    tokens = _tokens()
    sae = _sae(64, "blocks.0.attn.z")
    clean = tiny_llama(tokens)
    with tiny_llama.saes(sae, keep_error=True):  # the error term makes the forward exact
        torch.testing.assert_close(tiny_llama(tokens), clean)
    result = ms.evaluate_sae(tiny_llama, sae, tokens, outlier_ratio=None)
    assert result.n_tokens == 3 * 9 and 0 < result.l0 <= 32 and result.fve == result.fve


def test_encode_casts_other_float_dtypes_and_refuses_integers():
    """Issue 11: ``sae.encode`` with float64 input crashed in the matmul."""
    sae = _sae(8, arch="topk", k=3)
    x = torch.randn(5, 8, dtype=torch.float64)
    torch.testing.assert_close(sae.encode(x), sae.encode(x.float()))
    assert sae(x).dtype == torch.float32
    with pytest.raises(ms.SelectionError, match="floating-point"):
        sae.encode(torch.ones(5, 8, dtype=torch.long))
    with pytest.raises(ms.SelectionError, match=r"must be \[\.\.\., 8\]"):
        sae.encode(torch.randn(5, 7))


def test_save_saelens_onto_a_file_is_a_clear_error(tmp_path):
    """Issue 11: raw FileExistsError before."""
    (tmp_path / "taken").write_text("")
    with pytest.raises(OutputPathError, match="it is a file") as caught:
        ms.save_saelens(_sae(8), tmp_path / "taken")
    assert isinstance(caught.value, FileExistsError)  # `except FileExistsError` still catches it
    with pytest.raises(OutputPathError, match="is a file"):
        ms.save_saelens(_sae(8), tmp_path / "taken" / "sae")


def test_a_config_with_k_and_no_architecture_loads_as_topk(tmp_path):
    """Issue 11: such a cfg loaded silently as a ReLU SAE."""
    sae = _sae(8, arch="topk", k=3)
    folder = ms.save_saelens(sae, tmp_path / "sae")
    cfg = json.loads((folder / "cfg.json").read_text())
    del cfg["architecture"]
    (folder / "cfg.json").write_text(json.dumps(cfg))
    with pytest.warns(UserWarning, match="read as a TopK SAE"):
        loaded = ms.load_sae(folder)
    assert loaded.cfg.architecture == "topk" and loaded.cfg.k == 3
    x = torch.randn(6, 8)
    torch.testing.assert_close(loaded.encode(x), sae.encode(x))
    (folder / "cfg.json").write_text(json.dumps({**cfg, "activation_fn": "relu"}))
    with pytest.raises(ms.MechscopeError, match="only TopK SAEs have a k"):
        ms.load_sae(folder)


def test_an_sae_without_hook_name_says_so(tiny_llama):
    """Issue 11: evaluating or collecting features failed with ``Unknown activation name ''``."""
    sae = _sae(64)
    for call in (lambda: ms.evaluate_sae(tiny_llama, sae, _tokens()),
                 lambda: ms.collect_features(tiny_llama, sae, _tokens(), progress=False),
                 lambda: tiny_llama.saes(sae).__enter__(),
                 lambda: ms.splice_hooks(sae)):
        with pytest.raises(ms.SelectionError, match=r"cfg\.hook_name is empty: set it to the activation it reads"):
            call()


def test_a_glob_hook_name_is_refused_everywhere(tiny_llama, tmp_path):
    """Issue 11 silent case 3: a glob as an SAE's hook_name attached at block 0."""
    with pytest.raises(ms.SelectionError, match="one exact activation name"):
        ms.SAEConfig(d_in=64, d_sae=8, architecture="relu", hook_name="blocks.*.resid_post")
    folder = ms.save_saelens(_sae(64, "blocks.0.resid_post"), tmp_path / "sae")
    with pytest.raises(ms.SelectionError, match="one exact activation name"):
        ms.load_sae(folder, hook_name="blocks.?.resid_post")
    sae = _sae(64, "blocks.0.resid_post")
    sae.cfg.hook_name = "blocks.*.resid_post"  # set after construction
    with pytest.raises(ms.SelectionError, match="one exact activation name"):
        ms.splice_hooks(sae)
    with pytest.raises(ms.SelectionError, match="one exact activation name"), tiny_llama.saes(sae):
        pass


TEXT = "It\u2019s the dashboard\u2019s job to show\n\ttokens as text, not as byte-level pieces."


def test_dashboards_and_tables_show_decoded_tokens(smol, tmp_path):
    """Issue 11 "Display of tokens": the dashboard listed raw byte-level BPE pieces (``âĢĻ`` for
    ``’``, ``Ġ``-prefixed words)."""
    tokens = smol.to_tokens([TEXT, TEXT.upper()], prepend_bos=False)
    sae = _sae(smol.cfg.d_model, "blocks.0.resid_post")
    features = ms.collect_features(smol, sae, tokens, progress=False, outlier_ratio=None)
    latent = int(features.fire_counts.argmax())
    report = features.latent(smol, sae, latent, context=(40, 40))
    example = report.top_examples[0]
    assert example.tokens == token_texts(smol.tokenizer, tokens[example.window, example.start:].tolist())[
        : len(example.tokens)]
    shown = report.to_dataframe()["token"].tolist()
    assert "\u2019" in "".join(shown) and "\u00b7dashboard" in shown and "\u21b5" in "".join(shown)
    assert not any(piece in t for t in shown for piece in ("\u0120", "\u00e2\u0122", "\u010a"))
    page = features.dashboard(smol, sae, tmp_path / "dash.html", [latent]).read_text(encoding="utf-8")
    payload = json.loads(re.search(r'id="latents">(.*?)</script>', page, re.DOTALL).group(1).replace("<\\/", "</"))
    labels = payload[0]["top_examples"][0]["tokens"] + [t for t, _ in payload[0]["promoted"]]
    assert "\u00b7dashboard" in labels and not any("\u0120" in t or " " in t for t in labels)
    neuronpedia = json.loads(features.to_neuronpedia(smol, sae, tmp_path / "np.json", [latent]).read_text())
    assert " dashboard" in neuronpedia["features"][0]["activations"][0]["tokens"]  # that format keeps the text
