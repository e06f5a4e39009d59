"""Activation store: the buffer emits every token once and mixes sequences, disk shards
round-trip and refuse a different harvest."""

from __future__ import annotations

import pytest
import torch

import mechscope as ms
from mechscope.data.harvest import ShuffleBuffer, massive_tokens
from mechscope.sae.splice import splice_hooks
from mechscope.sae.store import StoreSpec, read_shards, training_batches, write_shards


def test_shuffle_buffer_emits_each_token_once_and_mixes():
    chunks = [{"a": torch.arange(i * 100, (i + 1) * 100).float()[:, None]} for i in range(10)]  # 10 "sequences"
    batches = list(ShuffleBuffer(capacity=400, seed=1).mix(chunks, batch_size=50))
    seen = torch.cat([b["a"][:, 0] for b in batches]).long()
    assert sorted(seen.tolist()) == list(range(1000))
    assert len({int(v) // 100 for v in batches[0]["a"][:, 0]}) >= 3  # the first batch spans several sequences
    again = list(ShuffleBuffer(capacity=400, seed=1).mix(chunks, batch_size=50))
    assert all(torch.equal(x["a"], y["a"]) for x, y in zip(batches, again))
    with pytest.raises(ms.SelectionError, match="capacity"):
        ShuffleBuffer(0)


def test_shards_round_trip_and_refuse_another_harvest(tmp_path):
    spec = StoreSpec("tiny", ("x", "y"), context_size=16, corpus="unit")
    gen = torch.Generator().manual_seed(0)
    chunks = [{"x": torch.randn(30, 4, generator=gen), "y": torch.randn(30, 2, generator=gen)} for _ in range(5)]
    assert write_shards(tmp_path / "acts", spec, chunks, shard_tokens=64) == 150
    assert len(list((tmp_path / "acts").glob("shard_*.safetensors"))) == 3
    back = list(read_shards(tmp_path / "acts", spec))
    for name in ("x", "y"):
        assert torch.equal(torch.cat([c[name] for c in back]), torch.cat([c[name] for c in chunks]))
    other = StoreSpec("tiny", ("x", "y"), context_size=32, corpus="unit")
    with pytest.raises(ms.SelectionError, match="context_size: cached 16, wanted 32"):
        list(read_shards(tmp_path / "acts", other))
    with pytest.raises(ms.MechscopeError, match="no activation cache"):
        list(read_shards(tmp_path / "nothing", spec))
    (tmp_path / "acts" / "shard_00001.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ms.MechscopeError, match="missing or corrupt"):
        list(read_shards(tmp_path / "acts", spec))
    with pytest.raises(ms.SelectionError, match="the spec says"):
        write_shards(tmp_path / "bad", spec, [{"x": torch.zeros(2, 4)}])


def test_training_batches_are_deterministic_full_batches(tmp_path):
    spec = StoreSpec("tiny", ("x", "y"), context_size=16, corpus="unit")
    gen = torch.Generator().manual_seed(1)
    write_shards(tmp_path, spec, [{"x": torch.randn(100, 4, generator=gen), "y": torch.randn(100, 2, generator=gen)}
                                  for _ in range(3)], shard_tokens=128)
    source = training_batches(tmp_path, spec, 32, target_name="y", buffer_tokens=96, epochs=2)
    first, second = list(source()), list(source())
    assert len(first) == 2 * (300 // 32) and all(x.shape == (32, 4) and y.shape == (32, 2) for x, y in first)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, second))
    with pytest.raises(ms.SelectionError, match="not in the cache"):
        training_batches(tmp_path, spec, 32, input_name="z")


def test_massive_tokens_are_flagged_and_left_out_of_training_batches(tmp_path):
    gen = torch.Generator().manual_seed(4)
    acts = torch.randn(500, 8, generator=gen)
    acts[[7, 300]] *= 1000  # two attention-sink-like outliers
    assert massive_tokens(acts, 10.0).nonzero().squeeze(-1).tolist() == [7, 300]
    assert not massive_tokens(acts, None).any()
    spec = StoreSpec("tiny", ("x",), context_size=16, corpus="unit")
    write_shards(tmp_path, spec, [{"x": acts}], shard_tokens=1000)
    rows = torch.cat([x for x, _ in training_batches(tmp_path, spec, 62)()])
    assert rows.shape[0] == 496 and rows.norm(dim=-1).max() < 100  # 498 kept, the 2-row tail dropped
    kept_all = torch.cat([x for x, _ in training_batches(tmp_path, spec, 50, outlier_ratio=None)()])
    assert kept_all.norm(dim=-1).max() > 100


def test_splicing_leaves_massive_tokens_alone():
    sae = ms.SAE(ms.SAEConfig(d_in=8, d_sae=16, architecture="relu", hook_name="blocks.0.resid_post"))
    x = torch.randn(2, 6, 8, generator=torch.Generator().manual_seed(5))
    x[1, 3] *= 1000
    hook = splice_hooks(sae, outlier_ratio=10.0)["blocks.0.resid_post"]
    out = hook(x, None)
    assert torch.equal(out[1, 3], x[1, 3])
    torch.testing.assert_close(out[0], sae(x[0]).detach())  # all-zero SAE: the reconstruction is b_dec = 0
