"""SAE files written by the peer libraries themselves load in mechscope and compute what those
libraries compute (issue 11, "tests that prove what they claim": the format tests in
test_formats.py compare with hand-transcribed formulas; these compare with the libraries).

The fixtures in tests/sae/fixtures/ were written once, in the peers environment, by
tests/sae/fixtures/make_fixtures.py (SAELens, including an SAE trained by SAELens's own
``SAETrainer``; a Gemma Scope ``params.npz`` read back by SAELens's Gemma Scope loader;
EleutherAI sparsify; dictionary_learning), each with the library's own outputs on a seeded
input batch ``x`` `[16, 32]`: ``latents`` `[16, 64]` (its encode) and ``recon`` (its forward).
This test needs none of those libraries.

Tolerance: fp32 throughout, the same products summed over at most 64 terms of size ~1 in a
possibly different order (``x @ W`` against ``F.linear``, a dense decode against an
``embedding_bag``), so results agree to a few fp32 ulps of the outputs (~1e-6); ``ATOL`` /
``RTOL`` = 1e-5 leave a 10x margin and are far below any formula difference (a missing bias
or a transposed matrix moves outputs by ~0.1-1). Measured with SAELens 6.54.12, eai-sparsify
1.3.3, dictionary-learning 0.1.0: at most 1.9e-6 (latents) and 1.1e-6 (reconstructions), on
outputs up to ~13. The set of active latents must match exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mechscope.errors import MechscopeWarning
from mechscope.sae.formats import detect_format, load_sae

FIXTURES = Path(__file__).parent / "fixtures"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())
ATOL = RTOL = 1e-5

def cases() -> list:
    return [pytest.param(f, id=f["name"]) for f in MANIFEST["fixtures"]]


@pytest.mark.parametrize("fixture", cases())
def test_peer_file_matches_peer_forward(fixture: dict) -> None:
    """mechscope's encode / decode / forward of a file written by a peer library equal that
    library's own outputs on the same input (fp32, see the module docstring for the tolerance)."""
    folder = FIXTURES / fixture["name"]
    ref = load_file(str(folder / "reference.safetensors"))
    x, latents, recon = ref["x"], ref["latents"], ref["recon"]
    sae = load_sae(folder)
    assert detect_format(folder) == {"sae-lens": "gemma_scope" if fixture["name"] == "gemma_scope" else "saelens",
                                     "eai-sparsify": "sparsify",
                                     "dictionary-learning": "dictionary_learning"}[fixture["library"]]
    for key, value in fixture["expect"].items():
        assert getattr(sae.cfg, key) == value, key

    with torch.no_grad():
        got = sae.encode(x)
        torch.testing.assert_close(got, latents, atol=ATOL, rtol=RTOL)
        assert torch.equal(got != 0, latents != 0), "different active latents"
        torch.testing.assert_close(sae.decode(latents, x), recon, atol=ATOL, rtol=RTOL)
        torch.testing.assert_close(sae(x), recon, atol=ATOL, rtol=RTOL)
        # not vacuous: some latents fire, and the sparsity rule (top-k or threshold) cuts some
        # positive pre-activations, so a wrong k or threshold would be seen
        assert (latents != 0).any() and (latents == 0).any()
        if sae.cfg.architecture != "relu":
            assert ((sae.pre_activation(x) > 0) & (latents == 0)).any()


def test_fixtures_cover_every_peer_layout() -> None:
    """The fixtures include every layout mechscope loads and an SAE from SAELens's own trainer."""
    libraries = {f["library"] for f in MANIFEST["fixtures"]}
    assert libraries == {"sae-lens", "eai-sparsify", "dictionary-learning"}
    formats = {detect_format(FIXTURES / f["name"]) for f in MANIFEST["fixtures"]}
    assert formats == {"saelens", "gemma_scope", "sparsify", "dictionary_learning"}
    assert any("SAETrainer" in f["writer"] for f in MANIFEST["fixtures"])


def test_dictionary_learning_batchtopk_without_config_is_not_silent(tmp_path: Path) -> None:
    """A dictionary_learning ``ae.pt`` whose class cannot be told without its ``config.json``
    (issue 11, no silent reinterpretation) loads with a warning naming the assumption."""
    (tmp_path / "ae.pt").write_bytes((FIXTURES / "dl_batchtopk" / "ae.pt").read_bytes())
    with pytest.warns(MechscopeWarning, match="AutoEncoderTopK"):
        load_sae(tmp_path)
