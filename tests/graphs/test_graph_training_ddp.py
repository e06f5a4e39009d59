"""Data-parallel transcoder training: 2 CPU ranks on gloo under torchrun, each harvesting half
of every step's windows, end where one process harvesting them all ends."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap

import torch
from conftest import build_tiny

import mechscope as ms

RANK_SCRIPT = """
import sys, torch, torch.distributed as dist
sys.path.insert(0, {tests!r})
from conftest import build_tiny
import mechscope as ms
dist.init_process_group("gloo")
model = build_tiny("llama").model
windows = torch.randint(3, 97, (48, 12), generator=torch.Generator().manual_seed(4))
transcoders = ms.TranscoderSet.fresh(model, d_sae=32, k=4, seed=2)
ms.train_transcoders(model, transcoders, windows, ms.TrainConfig(**{config!r}), windows_per_step=8,
                     out={out!r}, progress=False)
if dist.get_rank() == 0:
    torch.save({{f"{{l}}.{{k}}": v.detach() for l, tc in transcoders.items() for k, v in tc.state_dict().items()}},
               {out!r} + "/final.pt")
dist.barrier()
dist.destroy_process_group()
"""

CONFIG = {"steps": 6, "lr": 3e-3, "warmup_steps": 2, "aux_k": 4, "normalize": True, "checkpoint_every": 3}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_ranks_match_one_process(tmp_path):
    script = tmp_path / "rank.py"
    script.write_text(textwrap.dedent(RANK_SCRIPT.format(tests=os.path.dirname(os.path.dirname(__file__)),
                                                         config=CONFIG, out=str(tmp_path))))
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                          "--master-addr", "127.0.0.1", "--master-port", str(_free_port()), str(script)],
                         check=False, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    parallel = torch.load(tmp_path / "final.pt", weights_only=True)
    model = build_tiny("llama").model
    windows = torch.randint(3, 97, (48, 12), generator=torch.Generator().manual_seed(4))
    single = ms.train_transcoders(model, ms.TranscoderSet.fresh(model, d_sae=32, k=4, seed=2), windows,
                                  ms.TrainConfig(**CONFIG), windows_per_step=8, progress=False)
    for layer, tc in single.items():
        for name, value in tc.state_dict().items():
            torch.testing.assert_close(parallel[f"{layer}.{name}"], value, rtol=1e-4, atol=1e-5, msg=f"{layer} {name}")
    assert (tmp_path / "checkpoint.safetensors").is_file()
