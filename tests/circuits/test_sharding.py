"""Prompt sharding: 2 CPU ranks on gloo under torchrun give the single-process edge scores,
faithfulness curve and ACDC circuit (5 prompts, so the shares are uneven: 2 and 3)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import build_tiny
from helpers import pairs_for

import mechscope.circuits as C
from mechscope.causal.metrics import logit_diff
from mechscope.circuits.sharding import chunks, local_pairs, subset
from mechscope.errors import MechscopeError

RANK_SCRIPT = """
import sys, torch, torch.distributed as dist
sys.path.insert(0, {tests!r})
import mechscope.circuits as C
from conftest import build_tiny
from helpers import pairs_for
from mechscope.circuits.sharding import local_pairs
from mechscope.causal.metrics import logit_diff
dist.init_process_group("gloo")
tiny = build_tiny("llama")
pairs = pairs_for(torch.cat([tiny.tokens, tiny.tokens.flip(0)[:2]]))
assert len(local_pairs(pairs)) == (2 if dist.get_rank() == 0 else 3)  # really split over 2 ranks
out = {{}}
for method in ("EAP", "EAP-IG-inputs"):
    for ablation in ("corrupted", "mean"):
        s = C.attribute(tiny.model, pairs, method=method, steps=3, ablation=ablation)
        out[f"{{method}}/{{ablation}}"] = s.scores
        out[f"{{method}}/{{ablation}}/means"] = torch.tensor([s.clean_metric, s.corrupted_metric])
scores = C.eap(tiny.model, pairs)
curve = C.faithfulness(tiny.model, pairs, scores, percents=(5, 20, 50, 100), n_bootstrap=50)
out["f"], out["ci"] = curve.values, curve.ci
out["acdc"] = C.acdc(tiny.model, pairs, 0.05, logit_diff).in_graph
if dist.get_rank() == 0:
    torch.save(out, {out!r})
dist.destroy_process_group()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_ranks_match_one_process(tmp_path):
    out = str(tmp_path / "ranks.pt")
    script = tmp_path / "rank.py"
    script.write_text(textwrap.dedent(RANK_SCRIPT.format(tests=os.path.dirname(os.path.dirname(__file__)), out=out)))
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([os.path.dirname(__file__), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                          "--master-addr", "127.0.0.1", "--master-port", str(_free_port()), str(script)],
                         check=False, capture_output=True, text=True, timeout=600, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    ranks = torch.load(out, weights_only=True)

    tiny = build_tiny("llama")
    pairs = pairs_for(torch.cat([tiny.tokens, tiny.tokens.flip(0)[:2]]))
    for method in ("EAP", "EAP-IG-inputs"):
        for ablation in ("corrupted", "mean"):
            s = C.attribute(tiny.model, pairs, method=method, steps=3, ablation=ablation)
            key = f"{method}/{ablation}"
            scale = float(s.scores.abs().max())
            torch.testing.assert_close(ranks[key], s.scores, rtol=1e-5, atol=1e-6 * scale, msg=key)
            torch.testing.assert_close(ranks[key + "/means"], torch.tensor([s.clean_metric, s.corrupted_metric]),
                                       rtol=1e-5, atol=1e-6)
    scores = C.eap(tiny.model, pairs)
    curve = C.faithfulness(tiny.model, pairs, scores, percents=(5, 20, 50, 100), n_bootstrap=50)
    torch.testing.assert_close(ranks["f"], curve.values, rtol=1e-5, atol=1e-5)  # f is O(1)
    # the gathered per-prompt values come back in prompt order: the bootstrap resamples agree too
    torch.testing.assert_close(ranks["ci"], curve.ci, rtol=1e-5, atol=1e-5, equal_nan=True)
    assert torch.equal(ranks["acdc"], C.acdc(tiny.model, pairs, 0.05, logit_diff).in_graph)


def test_one_process_shares_are_everything():
    tiny = build_tiny("llama")
    pairs = pairs_for(tiny.tokens)
    assert local_pairs(pairs) is pairs
    parts = list(chunks(pairs, 2))
    assert [len(p) for p in parts] == [2, 1]
    assert torch.equal(torch.cat([p.clean for p in parts]), pairs.clean)
    assert torch.equal(subset(pairs, slice(1, 3)).answers, pairs.answers[1:3])
    with pytest.raises(MechscopeError, match="batch_size"):
        list(chunks(pairs, 0))


def test_chunks_keep_each_rows_prompt_for_per_prompt_metrics():
    """A metric reading per-prompt task data through ``pairs.prompt_index`` (as greater-than's
    does) sees the right prompt in every chunk: chunked totals equal the unchunked ones."""
    tiny = build_tiny("llama")
    pairs = pairs_for(tiny.tokens)
    targets = torch.tensor([5, 17, 40])  # per-prompt data, indexed by prompt

    def target_logit(logits, pairs):
        rows = torch.arange(logits.shape[0])
        return logits[rows, pairs.answer_positions, targets[pairs.prompt_index]]

    whole = C.eap(tiny.model, pairs, target_logit)
    chunked = C.eap(tiny.model, pairs, target_logit, batch_size=1)
    assert torch.allclose(whole.scores, chunked.scores, atol=1e-5 * float(whole.scores.abs().max()))
    values, _ = C.evaluate_circuits(tiny.model, whole.graph, pairs, target_logit, [whole.top_n(30).in_graph],
                                    batch_size=2)
    values_whole, _ = C.evaluate_circuits(tiny.model, whole.graph, pairs, target_logit, [whole.top_n(30).in_graph])
    assert abs(values - values_whole).max() < 1e-5
    assert [c.prompt_index.tolist() for c in chunks(pairs, 2)] == [[0, 1], [2]]
