"""Pieces of SAE training checked against closed forms: JumpReLU's straight-through threshold
gradients, folding the normalisation into the weights, the sparse TopK decode."""

from __future__ import annotations

import torch
from test_train import sparse_source

import mechscope as ms
from mechscope.sae.architectures import _JumpReLU, _Step
from mechscope.sae.train import TrainConfig, fold_scale, init_sae, train_sae


def test_jumprelu_threshold_gradients_are_the_rectangle_kernel_estimates():
    pre = torch.tensor([[0.96, 1.02, 0.52, 2.0], [1.04, 0.96, 1.2, -1.0]], requires_grad=True)
    threshold = torch.tensor([1.0, 1.0, 0.55, 1.0], requires_grad=True)
    bandwidth = 0.1
    out = _JumpReLU.apply(pre, threshold, bandwidth)
    torch.testing.assert_close(out.detach(), pre.detach() * (pre.detach() > threshold.detach()))
    out.sum().backward()
    # rect((pre - t) / h) = 1 where |pre - t| < h / 2: entries (0,0), (0,1), (0,2), (1,0), (1,1)
    in_window = torch.tensor([[1.0, 1, 1, 0], [1, 1, 0, 0]])
    expected = -(threshold.detach() / bandwidth) * in_window
    torch.testing.assert_close(threshold.grad, expected.sum(0))
    torch.testing.assert_close(pre.grad, (pre.detach() > threshold.detach()).float())

    threshold.grad = None
    step = _Step.apply(pre, threshold, bandwidth)
    assert torch.equal(step.detach(), (pre.detach() > threshold.detach()).float())
    step.sum().backward()
    torch.testing.assert_close(threshold.grad, (-(1 / bandwidth) * in_window).sum(0))


def test_a_larger_l0_coefficient_gives_fewer_active_latents():
    l0s = []
    for coefficient in (0.01, 0.2):
        sae = ms.SAE(ms.SAEConfig(d_in=16, d_sae=96, architecture="jumprelu"))
        config = TrainConfig(steps=300, lr=3e-3, warmup_steps=20, l0_coefficient=coefficient, jumprelu_bandwidth=0.05,
                             jumprelu_init_threshold=0.1)
        train_sae(sae, sparse_source(), config, progress=False)
        x, _ = next(sparse_source(0, 1024)())
        l0s.append(float((sae.encode(x) != 0).sum(-1).float().mean()))
    assert l0s[1] < 0.7 * l0s[0]


def test_folding_the_scale_keeps_latents_and_scales_the_reconstruction():
    for cfg in (ms.SAEConfig(d_in=12, d_sae=40, architecture="relu"),
                ms.SAEConfig(d_in=12, d_sae=40, architecture="jumprelu"),
                ms.SAEConfig(d_in=12, d_sae=40, architecture="topk", k=5, d_out=7, skip_connection=True)):
        sae = init_sae(ms.SAE(cfg), seed=1)
        with torch.no_grad():
            sae.b_dec.normal_()
            sae.b_enc.normal_(std=0.1)
            sae.threshold.fill_(0.05)
            if sae.W_skip is not None:
                sae.W_skip.normal_()
        x = torch.randn(20, 12) * 30
        scale_in, scale_out = 0.2, 0.2 if not cfg.is_transcoder else 0.7
        with torch.no_grad():
            latents, recon = sae.encode(x * scale_in), sae(x * scale_in)
            fold_scale(sae, scale_in, scale_out)
            torch.testing.assert_close(sae.encode(x), latents, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(sae(x), recon / scale_out, rtol=1e-5, atol=1e-4)


def test_normalized_training_returns_an_sae_for_the_raw_activations():
    def scaled():
        for x, _ in sparse_source()():
            yield x * 80, x * 80
    sae = ms.SAE(ms.SAEConfig(d_in=16, d_sae=96, architecture="topk", k=4))
    train_sae(sae, scaled, TrainConfig(steps=300, lr=3e-3, warmup_steps=20, aux_k=16, normalize=True), progress=False)
    x = next(sparse_source(0, 2048)())[0] * 80
    with torch.no_grad():
        fve = 1 - (x - sae(x)).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
    assert fve > 0.75


def test_sparse_decode_equals_the_dense_decode():
    sae = init_sae(ms.SAE(ms.SAEConfig(d_in=10, d_sae=64, architecture="topk", k=6)), seed=2)
    with torch.no_grad():
        sae.b_dec.normal_()
    x = torch.randn(3, 7, 10)
    top = torch.relu(sae.pre_activation(x)).topk(6, dim=-1)
    torch.testing.assert_close(sae.decode_sparse(top.indices, top.values), sae(x), rtol=1e-5, atol=1e-5)
