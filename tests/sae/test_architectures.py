"""The SAE architecture registry: each architecture is one entry, an unknown name gets close
matches, and an architecture registered here (a plain-L1 ReLU SAE with unit-norm decoder
rows) plugs into `SAEConfig`, `SAE.encode` and `train_sae` without touching them."""

from __future__ import annotations

import pytest
import torch
from test_train import sparse_source

import mechscope as ms
from mechscope.errors import SelectionError, UnknownSAEArchitectureError
from mechscope.sae.architectures import (
    ARCHITECTURES,
    Architecture,
    get_architecture,
    register_architecture,
    sparsity_warmup,
)
from mechscope.sae.train import TrainConfig, train_sae


class PlainL1(Architecture):
    """ReLU latents, an unweighted L1 penalty, unit-norm decoder rows; counts its calls."""

    name = "plain_l1"

    def __init__(self):
        self.calls = {"start": 0, "penalty": 0, "after_step": 0}

    def encode(self, sae, pre):
        return torch.relu(pre)

    def penalty(self, sae, batch, latents, recon, config):
        self.calls["penalty"] += 1
        return 0.05 * sparsity_warmup(batch.step, config) * latents.sum(-1).mean()

    def start(self, sae, config):
        self.calls["start"] += 1

    def after_step(self, sae):
        self.calls["after_step"] += 1


@pytest.fixture
def plain_l1():
    arch = register_architecture(PlainL1())
    yield arch
    del ARCHITECTURES[arch.name]


def test_the_four_built_in_architectures_are_entries():
    assert list(ARCHITECTURES)[:4] == ["relu", "topk", "batchtopk", "jumprelu"]
    assert [get_architecture(n).uses_k for n in ("relu", "topk", "batchtopk", "jumprelu")] == [False, True, True, False]
    assert get_architecture("jumprelu").trains_threshold and not get_architecture("batchtopk").trains_threshold
    assert not get_architecture("relu").unit_norm_decoder and get_architecture("relu").init_decoder_norm == 0.1


def test_an_unknown_architecture_names_the_closest():
    with pytest.raises(UnknownSAEArchitectureError,
                       match=r"unknown SAE architecture 'batch_topk'\. Did you mean 'batchtopk' or 'topk'\?") as caught:
        ms.SAEConfig(d_in=4, d_sae=8, architecture="batch_topk")
    assert isinstance(caught.value, SelectionError) and "Registered: batchtopk, jumprelu, relu, topk" in str(caught.value)
    with pytest.raises(UnknownSAEArchitectureError, match="plain_l1"):  # not registered outside the fixture
        get_architecture("plain_l1")


def test_a_registered_architecture_trains_without_touching_the_trainer(plain_l1):
    cfg = ms.SAEConfig(d_in=16, d_sae=96, architecture="plain_l1")
    sae = ms.SAE(cfg)
    assert not sae.threshold.requires_grad
    x, _ = next(sparse_source(0, 64)())
    torch.testing.assert_close(sae.encode(x), torch.relu(sae.pre_activation(x)))

    config = TrainConfig(steps=300, lr=3e-3, warmup_steps=20, sparsity_warmup_steps=50)
    train_sae(sae, sparse_source(), config, progress=False)
    assert plain_l1.calls == {"start": 1, "penalty": 300, "after_step": 300}
    torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(96))  # unit_norm_decoder, the default
    x, _ = next(sparse_source(0, 2048)())
    with torch.no_grad():
        fve = 1 - (x - sae(x)).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
    assert fve > 0.75


def test_names_are_registered_once(plain_l1):
    with pytest.raises(SelectionError, match="registered already"):
        register_architecture(PlainL1())
    assert register_architecture(plain_l1, replace=True) is plain_l1
    with pytest.raises(SelectionError, match="has no name"):
        register_architecture(Architecture())
