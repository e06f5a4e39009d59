"""Benchmark: SAE training on the bundled model's blocks.15.resid_post (d_in 576, 4,608
latents, batch 4,096, same steps and constant lr for every row).

- Harvesting: `harvest_to_disk` (bf16 model, forward stopped after block 15) vs the naive
  way (fp32 `run_with_cache` of the full forward), tokens/s, and disk per 1M activations.
- Training from cached activations, TopK (k 32) and ReLU-L1, in fp32 and with bf16 autocast:
  `train_sae` vs a plain PyTorch TopK loop with a dense decode (the naive way) and vs SAELens's
  `SAETrainer` with the same autocast setting (where `.venv-peers` has sae-lens, `make
  bench-peers`): tokens/s and FVE on held-out activations.
- End to end (harvest + train, one pass) tokens/s of each mechscope row.

    python bench/sae.py            # 160k harvested tokens, 60 training steps per row
    python bench/sae.py --quick    # 40k tokens, 15 steps
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

import mechscope as ms
from mechscope.data.corpora import mixed_windows
from mechscope.models.hardware import default_dtype, dtype_name, run_settings
from mechscope.sae.store import StoreSpec, harvest_to_disk, read_shards

PEERS = Path(__file__).resolve().parents[1] / ".venv-peers" / "bin" / "python"
HOOK, D_SAE, K, BATCH, LR = "blocks.15.resid_post", 4608, 32, 4096, 4e-4


def fve(sae: ms.SAE, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float(1 - (x - sae(x)).pow(2).sum() / (x - x.mean(0)).pow(2).sum())


def source(acts: torch.Tensor):
    def batches():
        generator = torch.Generator().manual_seed(0)
        while True:
            order = torch.randperm(len(acts), generator=generator)
            for start in range(0, len(order) - BATCH + 1, BATCH):
                chunk = acts[order[start : start + BATCH]]
                yield chunk, chunk
    return batches


def naive_topk(acts: torch.Tensor, steps: int) -> tuple[float, ms.SAE]:
    """Plain PyTorch TopK: encode, top-k, dense scatter, dense decode, Adam."""
    sae = ms.init_sae(ms.SAE(ms.SAEConfig(d_in=acts.shape[1], d_sae=D_SAE, architecture="topk", k=K)))
    optimizer = torch.optim.Adam(sae.parameters(), lr=LR)
    batches = source(acts)()
    start = time.perf_counter()
    for _ in range(steps):
        x, _ = next(batches)
        pre = torch.relu((x - sae.b_dec) @ sae.W_enc + sae.b_enc)
        top = pre.topk(K, dim=-1)
        latents = torch.zeros_like(pre).scatter(-1, top.indices, top.values)
        loss = (latents @ sae.W_dec + sae.b_dec - x).pow(2).sum(-1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            sae.W_dec.div_(sae.W_dec.norm(dim=-1, keepdim=True))
    return time.perf_counter() - start, sae


def mechscope_train(acts: torch.Tensor, arch: str, steps: int, autocast: bool) -> tuple[float, ms.SAE]:
    sae = ms.SAE(ms.SAEConfig(d_in=acts.shape[1], d_sae=D_SAE, architecture=arch, k=K))
    config = ms.TrainConfig(steps=steps, lr=LR, warmup_steps=1, decay_fraction=0.0, sparsity_warmup_steps=1,
                            checkpoint_every=10**9, autocast=autocast)
    start = time.perf_counter()
    ms.train_sae(sae, source(acts), config, progress=False)
    return time.perf_counter() - start, sae


def saelens_train(acts: torch.Tensor, arch: str, steps: int, folder: Path, autocast: bool) -> tuple[float, ms.SAE] | None:
    if not PEERS.exists():
        return None
    if not (folder / "acts.safetensors").exists():
        save_file({"train": acts.contiguous()}, str(folder / "acts.safetensors"))
    out = folder / f"saelens_{arch}_{autocast}"
    run = subprocess.run([str(PEERS), str(Path(__file__).parent / "peers" / "saelens_train.py"),
                          str(folder / "acts.safetensors"), "topk" if arch == "topk" else "standard", str(steps),
                          str(BATCH), str(LR), str(out), str(int(autocast))], capture_output=True, text=True,
                         check=False)
    if run.returncode != 0:
        print(f"  SAELens run failed: {run.stderr.strip()[-400:]}")
        return None
    seconds = json.loads(run.stdout.strip().splitlines()[-1])["seconds"]
    return seconds, ms.load_sae(out)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    n_windows, steps = (320, 15) if args.quick else (1280, 60)
    torch.manual_seed(0)
    harvest_dtype = default_dtype()  # bf16 where this CPU computes in it natively, else fp32
    print(f"SAE benchmark: {HOOK}, d_sae {D_SAE}, batch {BATCH}, {steps} steps per row, "
          f"{run_settings(harvest_dtype)} (harvest; training in float32 and bf16 autocast)")

    bf16 = ms.load("smollm2-135m", dtype=harvest_dtype)
    windows = mixed_windows(bf16.tokenizer, ["wikipedia", "python_stdlib"], 128, seed=0)
    train_windows, held_out = windows[:n_windows], windows[-64:]
    spec = StoreSpec("smollm2-135m", (HOOK,), context_size=128, corpus="wikipedia+python_stdlib", dtype="bfloat16",
                     model_dtype=dtype_name(harvest_dtype))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        n_tokens = harvest_to_disk(bf16, spec, train_windows, tmp / "acts", batch_size=8, progress=False)
        harvest_s = time.perf_counter() - start
        disk = sum(f.stat().st_size for f in (tmp / "acts").glob("shard_*.safetensors"))
        fp32 = ms.load("smollm2-135m")
        start = time.perf_counter()
        naive_windows = train_windows[: max(8, n_windows // 8)]
        for batch in naive_windows.split(8):
            fp32.run_with_cache(batch, HOOK)
        naive_rate = naive_windows.numel() / (time.perf_counter() - start)
        rate = n_tokens / harvest_s
        print(f"\nharvest: {n_tokens:,} tokens in {harvest_s:.1f} s = {rate:,.0f} tok/s "
              f"(naive fp32 full forward {naive_rate:,.0f} tok/s: {rate / naive_rate:.2f}x); "
              f"disk per 1M activations {disk / n_tokens * 1e6 / 2**30:.2f} GiB (bf16)")

        acts = torch.cat([c[HOOK] for c in read_shards(tmp / "acts", spec)]).float()
        test = torch.cat([c[HOOK] for c in ms.harvest(bf16, [HOOK], held_out.split(8))]).float()
        del fp32
        rows = []
        for arch in ("topk", "relu"):
            for autocast in (False, True):
                tag = " (bf16 autocast)" if autocast else ""
                seconds, sae = mechscope_train(acts, arch, steps, autocast)
                rows.append((arch, autocast, "mechscope train_sae" + tag, seconds, fve(sae, test)))
                if arch == "topk" and not autocast:
                    seconds_naive, naive = naive_topk(acts, steps)
                    rows.append((arch, autocast, "plain PyTorch (dense decode)", seconds_naive, fve(naive, test)))
                peer = saelens_train(acts, arch, steps, tmp, autocast)
                if peer is not None:
                    rows.append((arch, autocast, "SAELens SAETrainer" + tag, peer[0], fve(peer[1], test)))
        tokens = steps * BATCH
        print(f"\n{'arch':6s} {'trainer':40s} {'tok/s':>8s} {'FVE':>6s}  mechscope's speed-up over the row")
        for arch, autocast, who, seconds, score in rows:
            ours = next(s for a, c, w, s, _ in rows if a == arch and c == autocast and w.startswith("mechscope"))
            print(f"{arch:6s} {who:40s} {tokens / seconds:8,.0f} {score:6.3f}  {seconds / ours:5.2f}x")
        for arch in ("topk", "relu"):
            for autocast in (False, True):
                seconds = next(s for a, c, w, s, _ in rows if a == arch and c == autocast and w.startswith("mechscope"))
                train_rate = tokens / seconds
                print(f"end to end {arch}{' (bf16 autocast)' if autocast else ''} (harvest + train, one pass): "
                      f"{1 / (1 / rate + 1 / train_rate):,.0f} tok/s")
        if not PEERS.exists():
            print("(.venv-peers not found: run `make bench-peers` for the SAELens rows)")


if __name__ == "__main__":
    main()
