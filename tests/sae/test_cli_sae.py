"""`mechscope sae train | eval | dashboard` end to end on a small random Llama saved to disk
with the bundled tokenizer, on a local text corpus; resuming a finished run runs no step and
changes nothing."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import mechscope as ms
from mechscope.sae.commands import parse_count
from mechscope.training import checkpoint_history


def _cli(*args: str) -> str:
    run = subprocess.run([sys.executable, "-m", "mechscope.cli", "sae", *args], capture_output=True, text=True,
                         timeout=600, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    return run.stdout


def test_train_eval_dashboard(saved_model, tmp_path):
    folder, corpus = saved_model
    data = ["--model", str(folder), "--dtype", "float32", "--corpus", str(corpus), "--context-size", "32",
            "--eval-windows", "8"]
    train = ["train", *data, "--hook", "blocks.0.resid_post", "--arch", "topk", "--k", "4", "--d-sae", "128",
             "--tokens", "24k", "--batch-size", "512", "--normalize", "--checkpoint-every", "10", "--out", str(tmp_path)]
    out = _cli(*train)
    assert "46 steps of 512" in out
    sae = ms.load_sae(tmp_path / "sae")
    assert sae.cfg.k == 4 and sae.cfg.hook_name == "blocks.0.resid_post" and sae.cfg.model_name == str(folder)
    spec = json.loads((tmp_path / "activations" / "spec.json").read_text())
    assert spec["context_size"] == 32 and spec["corpus"] == str(corpus) and spec["n_tokens"] > 5_000

    checkpoint = tmp_path / "checkpoint.safetensors"
    assert checkpoint_history(checkpoint) == (46, [[0, 46]])
    written = checkpoint.stat().st_mtime_ns
    out = _cli(*train, "--resume")  # a finished run resumes to the same weights, running no step
    assert "at step 46 of 46 (0 steps left; steps run so far: 0..46)" in out
    assert checkpoint.stat().st_mtime_ns == written  # no step ran: every 10th step would rewrite it
    again = ms.load_sae(tmp_path / "sae")
    assert all(torch.equal(a, b) for a, b in zip(sae.state_dict().values(), again.state_dict().values()))

    out = _cli("eval", *data, "--sae", str(tmp_path / "sae"), "--out", str(tmp_path / "eval.json"))
    metrics = json.loads((tmp_path / "eval.json").read_text())
    assert metrics["n_tokens"] == 8 * 31 and metrics["l0"] <= 4 and metrics["fve"] > 0.1  # 46 steps on a random model
    assert "ce_recovered" in out

    _cli("dashboard", *data, "--sae", str(tmp_path / "sae"), "--windows", "32", "--latents", "5",
         "--out", str(tmp_path / "dash.html"), "--neuronpedia", str(tmp_path / "np.json"))
    assert len(json.loads((tmp_path / "np.json").read_text())["features"]) == 5
    assert "<!DOCTYPE html>" in (tmp_path / "dash.html").read_text()


def test_counts_parse():
    assert parse_count("2M") == 2_000_000 and parse_count("500k") == 500_000 and parse_count("4096") == 4096
    with pytest.raises(Exception, match="not a count"):
        parse_count("lots")


def test_torchrun_two_ranks_harvest_their_own_windows_and_train(saved_model, tmp_path):
    folder, corpus = saved_model
    data = ["--model", str(folder), "--dtype", "float32", "--corpus", str(corpus), "--context-size", "32",
            "--eval-windows", "8"]
    train = ["sae", "train", *data, "--hook", "blocks.0.resid_post", "--arch", "relu", "--d-sae", "64",
             "--tokens", "8k", "--batch-size", "512", "--checkpoint-every", "5"]
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr",
                          "127.0.0.1", "--master-port", str(_free_port()), "-m", "mechscope.cli", *train,
                          "--out", str(tmp_path / "ddp")], capture_output=True, text=True, timeout=600, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "2 process(es)" in run.stdout and "15 steps of 512" in run.stdout
    shares = [json.loads((tmp_path / "ddp" / "activations" / f"rank{r}" / "spec.json").read_text()) for r in (0, 1)]
    _cli(*train[1:], "--out", str(tmp_path / "single"))  # one process, the same windows
    whole = json.loads((tmp_path / "single" / "activations" / "spec.json").read_text())
    assert shares[0]["n_tokens"] + shares[1]["n_tokens"] == whole["n_tokens"]  # the ranks split the windows
    assert shares[0]["windows_sha1"] != shares[1]["windows_sha1"]
    config = json.loads((tmp_path / "ddp" / "train_config.json").read_text())
    assert config["world_size"] == 2 and ms.load_sae(tmp_path / "ddp" / "sae").cfg.d_sae == 64


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
