"""Harvesting to disk: the forward stops after the deepest block needed, position 0 and special
tokens are dropped, and a killed harvest resumes at the shard it had not finished."""

from __future__ import annotations

import functools
import hashlib
import json
import operator

import pytest
import torch
from conftest import build_tiny

import mechscope as ms
from mechscope.data.corpora import CorpusUnavailableError, corpus_texts, mixed_windows, packed_windows
from mechscope.data.harvest import harvest
from mechscope.sae.store import StoreSpec, harvest_to_disk, read_shards

NAMES = ("blocks.0.mlp.out", "blocks.0.resid_post")  # the tiny models have 2 blocks


@pytest.fixture(scope="module")
def tiny_llama():
    return build_tiny("llama").model


def _windows(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(3, 97, (n, 9), generator=torch.Generator().manual_seed(seed))


def test_harvest_equals_the_cache_without_position_0_and_stops_early(tiny_llama):
    model = tiny_llama
    windows = _windows(4)
    fired = []
    with model.hooks({"blocks.*.resid_post": lambda x, ctx: fired.append(ctx.layer)}):
        chunks = list(harvest(model, NAMES, windows.split(2)))
    assert fired == [0, 0]  # block 1 never ran: the forward stopped after block 0
    _, cache = model.run_with_cache(windows, list(NAMES))
    for name in NAMES:
        got = torch.cat([c[name] for c in chunks])
        torch.testing.assert_close(got, cache[name][:, 1:].reshape(-1, cache[name].shape[-1]))
    kept = next(iter(harvest(model, NAMES, [windows], skip_first=False)))
    assert kept[NAMES[0]].shape[0] == windows.numel()


def test_harvest_to_disk_resumes_after_an_interruption(tiny_llama, tmp_path):
    model = tiny_llama
    spec = StoreSpec("tiny-llama", NAMES, context_size=9, corpus="random")
    windows = _windows(10)
    n = harvest_to_disk(model, spec, windows, tmp_path / "full", batch_size=3, windows_per_shard=4, progress=False)
    assert n == 10 * 8
    full = list(read_shards(tmp_path / "full", spec))
    assert [c[NAMES[1]].shape[0] for c in full] == [32, 32, 16]

    # An interrupted harvest: its .partial folder holds the plan and the first shard only.
    partial = tmp_path / "again.partial"
    (tmp_path / "full").rename(partial)
    (partial / "spec.json").unlink()
    (partial / "shard_00001.safetensors").unlink()
    (partial / "shard_00002.safetensors").unlink()
    assert (partial / "plan.json").exists() is False  # a finished harvest removed its plan: write it back
    fingerprint = hashlib.sha1(windows.numpy().tobytes()).hexdigest()
    plan = {**json.loads(json.dumps(spec.__dict__)), "windows_sha1": fingerprint, "windows_per_shard": 4}
    (partial / "plan.json").write_text(json.dumps(plan))
    rows = []
    with model.hooks({"blocks.0.resid_pre": lambda x, ctx: rows.append(x.shape[0])}):
        harvest_to_disk(model, spec, windows, tmp_path / "again", batch_size=3, windows_per_shard=4, progress=False)
    assert sum(rows) == 6  # only the windows of the two missing shards ran
    again = list(read_shards(tmp_path / "again", spec))
    for a, b in zip(full, again):
        assert all(torch.equal(a[k], b[k]) for k in NAMES)
    assert not partial.exists()

    other = StoreSpec("tiny-llama", NAMES, context_size=9, corpus="another")
    with pytest.raises(ms.SelectionError, match="corpus: cached 'random', wanted 'another'"):
        harvest_to_disk(model, other, windows, tmp_path / "again", progress=False)
    with pytest.raises(ms.SelectionError, match="other token windows"):
        harvest_to_disk(model, spec, windows.flip(0), tmp_path / "again", progress=False)
    with pytest.raises(ms.SelectionError, match="context size"):
        harvest_to_disk(model, spec, torch.zeros(3, 5, dtype=torch.long), tmp_path / "x", progress=False)


def test_corpus_windows(smol, tmp_path):
    smol_tokenizer = smol.tokenizer
    text = tmp_path / "notes.jsonl"
    text.write_text("\n".join(json.dumps({"text": f"Note number {i} says hello."}) for i in range(40)))
    texts = corpus_texts(str(text))
    assert len(texts) == 40 and texts[3] == "Note number 3 says hello."
    windows = packed_windows(smol_tokenizer, texts, 16)
    stream = functools.reduce(operator.iadd, (smol_tokenizer(t, add_special_tokens=False)["input_ids"] + [smol_tokenizer.eos_token_id]
                  for t in texts), [])
    assert windows.shape == (len(stream) // 16, 16) and windows.reshape(-1).tolist() == stream[: windows.numel()]
    mixed = mixed_windows(smol_tokenizer, [str(text), str(text)], 16, seed=1)
    assert mixed.shape[0] == 2 * windows.shape[0]
    assert sorted(map(tuple, mixed.tolist())) == sorted(map(tuple, torch.cat([windows, windows]).tolist()))
    with pytest.raises(CorpusUnavailableError, match="unknown corpus"):
        corpus_texts("no-such-corpus")
    with pytest.raises(CorpusUnavailableError, match="fewer than one window"):
        packed_windows(smol_tokenizer, ["hi"], 16)


def test_hf_corpus_without_datasets_says_how_to_get_it(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "datasets", None)
    with pytest.raises(CorpusUnavailableError, match="pip install datasets"):
        corpus_texts("hf:wikitext:train:text")


def test_hf_corpus_streams_a_local_dataset(tmp_path):  # datasets is in the test extra
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps({"text": f"document {i}", "id": i}) for i in range(50)))
    assert corpus_texts(f"hf:{tmp_path}:train:text")[:2] == ["document 0", "document 1"]
    assert len(corpus_texts(f"hf:{tmp_path}:train:text", max_chars=30)) == 3  # stops once 30 characters are read
    with pytest.raises(CorpusUnavailableError, match="no column 'body'"):
        corpus_texts(f"hf:{tmp_path}:train:body")
