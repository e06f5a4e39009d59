"""`mechscope transcoders train | eval` end to end on a small random Llama saved to disk with
the bundled tokenizer and a local corpus: every layer trained, saved in circuit-tracer's
layout, evaluated; a finished run resumed runs no step."""

from __future__ import annotations

import json
import subprocess
import sys

import mechscope as ms
from mechscope.training import checkpoint_history


def _cli(*args: str) -> str:
    run = subprocess.run([sys.executable, "-m", "mechscope.cli", "transcoders", *args], capture_output=True,
                         text=True, timeout=600, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    return run.stdout


def test_train_then_eval(saved_model, tmp_path):
    folder, corpus = saved_model
    data = ["--model", str(folder), "--dtype", "float32", "--corpus", str(corpus), "--context-size", "32",
            "--eval-windows", "8"]
    train = ["train", *data, "--d-sae", "64", "--k", "4", "--tokens", "20k", "--windows-per-step", "8",
             "--lr", "1e-2", "--checkpoint-every", "10", "--out", str(tmp_path)]
    out = _cli(*train)
    assert "training 2 topk transcoders (d_sae=64)" in out and "81 steps of 8 windows x 32 tokens" in out
    transcoders = ms.load_transcoders(tmp_path / "transcoders")
    assert transcoders.layers == [0, 1] and transcoders[1].cfg.hook_name == "blocks.1.ln2.out"
    metrics = json.loads((tmp_path / "eval.json").read_text())
    assert len(metrics["fve"]) == 2 and min(metrics["fve"]) > 0.1, metrics["fve"] and metrics["kl_with_errors"] < 1e-5
    assert checkpoint_history(tmp_path / "checkpoint.safetensors") == (81, [[0, 81]])
    written = (tmp_path / "checkpoint.safetensors").stat().st_mtime_ns
    _cli(*train, "--resume")
    assert (tmp_path / "checkpoint.safetensors").stat().st_mtime_ns == written  # no step ran
    out = _cli("eval", *data, "--transcoders", str(tmp_path / "transcoders"), "--out", str(tmp_path / "again.json"))
    assert json.loads((tmp_path / "again.json").read_text())["fve"] == metrics["fve"] and "mean FVE" in out
    out = _cli("graph", *data, "--transcoders", str(tmp_path / "transcoders"), "--prompt", "def wrap(text):",
               "--slug", "wrap", "--max-features", "32", "--label-windows", "16", "--out", str(tmp_path / "frontend"))
    document = json.loads((tmp_path / "frontend" / "wrap.json").read_text())
    assert "replacement" in out and document["metadata"]["prompt"] == "def wrap(text):"
    labelled = [n for n in document["nodes"] if n["feature_type"] == "cross layer transcoder"]
    assert labelled and all("promotes" in n["clerp"] for n in labelled)
