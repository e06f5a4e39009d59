"""Data-parallel SAE training: 2 CPU ranks on gloo under torchrun end where one process
trained on the same global batches ends."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap

import torch
from test_train import sparse_source

import mechscope as ms
from mechscope.sae.train import TrainConfig, train_sae

RANK_SCRIPT = """
import sys, torch, torch.distributed as dist
sys.path.insert(0, {tests!r})
import mechscope as ms
from mechscope.distributed import local_rows
from mechscope.sae.train import TrainConfig, train_sae
from test_train import sparse_source
dist.init_process_group("gloo")

def batches():
    for x, target in sparse_source(batch=256)():
        assert dist.get_world_size() == 2 and local_rows(x).shape[0] == 128  # really split over 2 ranks
        yield local_rows(x), local_rows(target)

sae = ms.SAE(ms.SAEConfig(d_in=16, d_sae=64, architecture={arch!r}, k=4))
train_sae(sae, batches, TrainConfig(**{config!r}), out={out!r}, progress=False)
if dist.get_rank() == 0:
    torch.save({{k: v.detach() for k, v in sae.state_dict().items()}}, {out!r} + "/final.pt")
dist.barrier()  # neither rank tears the group down while the other still writes
dist.destroy_process_group()
"""

CONFIG = {"steps": 60, "lr": 3e-3, "warmup_steps": 5, "aux_k": 8, "normalize": True, "l1_coefficient": 0.5,
          "checkpoint_every": 30}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_ranks_match_one_process(tmp_path):
    for arch in ("topk", "relu"):
        out = str(tmp_path / arch)
        os.makedirs(out)
        script = tmp_path / f"rank_{arch}.py"
        script.write_text(textwrap.dedent(RANK_SCRIPT.format(tests=os.path.dirname(__file__), arch=arch,
                                                             config=CONFIG, out=out)))
        run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                              "--master-addr", "127.0.0.1", "--master-port", str(_free_port()), str(script)],
                             check=False, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert run.returncode == 0, run.stderr[-3000:]
        parallel = torch.load(out + "/final.pt", weights_only=True)
        single = train_sae(ms.SAE(ms.SAEConfig(d_in=16, d_sae=64, architecture=arch, k=4)),
                           sparse_source(batch=256), TrainConfig(**CONFIG), progress=False)
        for name, value in single.state_dict().items():
            torch.testing.assert_close(parallel[name], value, rtol=1e-4, atol=1e-4, msg=f"{arch} {name}")
        assert (tmp_path / arch / "checkpoint.safetensors").is_file()
