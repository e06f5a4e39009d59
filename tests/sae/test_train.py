"""SAE training on data with known sparse structure; exact resume after SIGKILL."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import mechscope as ms
from mechscope.sae.train import TrainConfig, _geometric_median, train_sae
from mechscope.training import checkpoint_history

D_IN, N_FEATURES = 16, 48


def sparse_source(seed: int = 0, batch: int = 256):
    """x = sum of ~3 of 48 random unit directions with random magnitudes, plus an offset."""
    def batches():
        gen = torch.Generator().manual_seed(seed)
        directions = torch.nn.functional.normalize(torch.randn(N_FEATURES, D_IN, generator=gen), dim=-1)
        offset = torch.randn(D_IN, generator=gen)
        while True:
            active = torch.rand(batch, N_FEATURES, generator=gen) < 3 / N_FEATURES
            x = (active * (1 + torch.rand(batch, N_FEATURES, generator=gen))) @ directions + offset
            yield x, x
    return batches


def _fve(sae):
    x, _ = next(sparse_source(0, 2048)())  # the training distribution (same directions), a fresh sample
    with torch.no_grad():
        recon = sae(x)
    return float(1 - (x - recon).pow(2).sum() / (x - x.mean(0)).pow(2).sum())


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "relu", "jumprelu"])
def test_training_learns_the_sparse_structure(arch):
    torch.manual_seed(0)
    sae = ms.SAE(ms.SAEConfig(d_in=D_IN, d_sae=96, architecture=arch, k=4))
    with torch.no_grad():
        sae.W_dec.copy_(torch.nn.functional.normalize(torch.randn(96, D_IN), dim=-1))
        sae.W_enc.copy_(sae.W_dec.T)
    before = _fve(sae)
    config = TrainConfig(steps=400, lr=3e-3, warmup_steps=20, l1_coefficient=1.0, sparsity_warmup_steps=50, aux_k=16,
                         dead_window_tokens=20_000, l0_coefficient=0.05, jumprelu_bandwidth=0.05,
                         jumprelu_init_threshold=0.1)
    train_sae(sae, sparse_source(), config, progress=False)
    sae.eval()
    assert _fve(sae) > 0.75 > before
    x, _ = next(sparse_source(0, 1024)())
    l0 = (sae.encode(x) != 0).sum(-1).float().mean()
    if arch == "topk":
        assert l0 == 4
        torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(96))
    elif arch == "batchtopk":
        assert sae.threshold[0] > 0 and 2 < l0 < 8  # the inference threshold keeps about k per token
    elif arch == "jumprelu":
        assert l0 < 20 and bool((sae.threshold > 0).all())
        torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(96))
    else:
        assert l0 < 20


def test_geometric_median_minimises_the_sum_of_distances():
    points = torch.randn(200, 5, generator=torch.Generator().manual_seed(0)) ** 3
    median = _geometric_median(points)
    cost = (points - median).norm(dim=-1).sum()
    for _ in range(50):
        nudged = median + 0.01 * torch.randn(5)
        assert (points - nudged).norm(dim=-1).sum() >= cost - 1e-4


KILLED_RUN = """
import os, signal, sys, torch
sys.path.insert(0, {tests!r})
import mechscope as ms
from mechscope.sae.train import TrainConfig, train_sae
from test_train import sparse_source
torch.manual_seed(0)
sae = ms.SAE(ms.SAEConfig(d_in=16, d_sae=32, architecture="topk", k=4))
config = TrainConfig(steps=60, lr=3e-3, warmup_steps=5, aux_k=8, dead_window_tokens=2000, checkpoint_every=20)

def die(step):
    if step == 40:
        os.kill(os.getpid(), signal.SIGKILL)

train_sae(sae, sparse_source(), config, out={out!r}, progress=False, on_checkpoint=die)
"""


def test_sigkill_then_resume_gives_the_uninterrupted_weights(tmp_path):
    tests = os.path.dirname(__file__)
    run = subprocess.run([sys.executable, "-c", textwrap.dedent(KILLED_RUN.format(tests=tests, out=str(tmp_path)))],
                         check=False, capture_output=True, text=True, timeout=300)
    assert run.returncode == -9, run.stderr[-2000:]
    checkpoint = tmp_path / "checkpoint.safetensors"
    assert checkpoint_history(checkpoint) == (40, [[0, 40]])  # killed right after the step-40 checkpoint
    config = TrainConfig(steps=60, lr=3e-3, warmup_steps=5, aux_k=8, dead_window_tokens=2000, checkpoint_every=20)
    torch.manual_seed(0)
    written = []
    resumed = train_sae(ms.SAE(ms.SAEConfig(d_in=16, d_sae=32, architecture="topk", k=4)), sparse_source(), config,
                        out=tmp_path, resume=True, progress=False, on_checkpoint=written.append)
    # only steps 40..60 ran: a resume that retrained from step 0 would also write steps 20 and 40
    assert written == [60] and checkpoint_history(checkpoint) == (60, [[0, 40], [40, 60]])
    torch.manual_seed(0)
    straight = train_sae(ms.SAE(ms.SAEConfig(d_in=16, d_sae=32, architecture="topk", k=4)), sparse_source(), config,
                         progress=False)
    for (name, a), (_, b) in zip(resumed.named_parameters(), straight.named_parameters()):
        assert torch.equal(a, b), name


def test_bad_training_requests(tmp_path):
    with pytest.raises(ms.SelectionError, match="out folder"):
        train_sae(ms.SAE(ms.SAEConfig(d_in=4, d_sae=8, architecture="relu")), sparse_source(), TrainConfig(steps=1),
                  resume=True, progress=False)
