"""The SAE-specific activation cache: harvests (`mechscope.data.harvest`) written to disk in
sharded safetensors, so several SAEs can train from one harvest, and read back as shuffled
training batches.

    spec = StoreSpec("smollm2-135m", ("blocks.15.resid_post",), context_size=128, corpus="wikipedia")
    harvest_to_disk(model, spec, windows, "acts/")                     # resumable, shard by shard
    batches = training_batches("acts/", spec, batch_size=4096)          # () -> iterator of (x, target)
    for x, target in batches():
        ...                                                             # [4096, d_in], [4096, d_out]
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ..data.harvest import Chunk, ShuffleBuffer, cat_chunks, harvest, massive_tokens, n_rows
from ..distributed import local_rows
from ..errors import ActivationCacheError, ActivationCacheMismatchError, SelectionError
from ..models.hooked import HookedModel


@dataclass(frozen=True)
class StoreSpec:
    """What a harvest is; a disk cache records it and refuses to be reused for another."""

    model: str
    hook_names: tuple[str, ...]
    context_size: int
    corpus: str
    dtype: str = "float32"  # of the stored activations
    skip_special: bool = True
    skip_first: bool = True
    model_dtype: str = "float32"  # the model ran in


def write_shards(path: str | os.PathLike, spec: StoreSpec, chunks: Iterable[Chunk], *,
                 shard_tokens: int = 262144) -> int:
    """Write ``chunks`` as safetensors shards of ``shard_tokens`` tokens plus ``spec.json``;
    returns the number of tokens. Written into a temporary folder renamed at the end, so a
    killed harvest never leaves a cache that looks complete."""
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    pending: Chunk = {}
    n_tokens = n_shards = 0
    for chunk in chunks:
        if set(chunk) != set(spec.hook_names):
            raise SelectionError(f"chunk has {sorted(chunk)}, the spec says {list(spec.hook_names)}")
        pending = chunk if not pending else cat_chunks([pending, chunk])
        while n_rows(pending) >= shard_tokens:
            _save_shard(tmp, n_shards, {k: v[:shard_tokens] for k, v in pending.items()})
            pending = {k: v[shard_tokens:] for k, v in pending.items()}
            n_shards, n_tokens = n_shards + 1, n_tokens + shard_tokens
    if pending and n_rows(pending):
        _save_shard(tmp, n_shards, pending)
        n_shards, n_tokens = n_shards + 1, n_tokens + n_rows(pending)
    (tmp / "spec.json").write_text(json.dumps({**asdict(spec), "n_tokens": n_tokens, "n_shards": n_shards}))
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)
    return n_tokens


def harvest_to_disk(model: HookedModel, spec: StoreSpec, windows: torch.Tensor, path: str | os.PathLike, *,
                    batch_size: int = 8, windows_per_shard: int = 2048, progress: bool = True) -> int:
    """Harvest ``spec.hook_names`` from token windows `[n, spec.context_size]` into a shard cache
    at ``path`` (the layout `read_shards` reads); returns the number of tokens.

    Resumable: each shard covers a fixed run of ``windows_per_shard`` windows and is renamed
    into the ``.partial`` folder only when complete, so a killed harvest restarted with the same
    arguments skips the windows of the shards it finished. A finished cache with the same spec
    and the same windows (a SHA-1 of the token ids is recorded) is reused as it is; otherwise
    it is refused.
    """
    path = Path(path)
    if windows.ndim != 2 or windows.shape[1] != spec.context_size:
        raise SelectionError(f"windows must be [n, {spec.context_size}] (the spec's context size), "
                             f"got {tuple(windows.shape)}")
    fingerprint = hashlib.sha1(windows.contiguous().numpy().tobytes()).hexdigest()
    if (path / "spec.json").is_file():
        stored = _check_spec(path, spec)
        if stored.get("windows_sha1") != fingerprint:
            raise ActivationCacheMismatchError(
                f"the activation cache at {str(path)!r} was harvested from other token windows "
                "(another corpus order, seed, held-out split or length): use another folder")
        return stored["n_tokens"]
    tmp = path.with_name(path.name + ".partial")
    tmp.mkdir(parents=True, exist_ok=True)
    plan = json.loads(json.dumps({**asdict(spec), "windows_sha1": fingerprint, "windows_per_shard": windows_per_shard}))
    plan_file = tmp / "plan.json"
    if plan_file.is_file() and json.loads(plan_file.read_text()) != plan:
        shutil.rmtree(tmp)  # a different harvest was interrupted here: start over
        tmp.mkdir(parents=True)
    plan_file.write_text(json.dumps(plan))
    shard_starts = range(0, len(windows), windows_per_shard)
    dtype = getattr(torch, spec.dtype)
    bar = tqdm(total=len(windows), disable=not progress, desc="harvest", unit="seq")
    for index, start in enumerate(shard_starts):
        shard = tmp / f"shard_{index:05d}.safetensors"
        rows = windows[start : start + windows_per_shard]
        if not shard.is_file():
            chunks = list(harvest(model, spec.hook_names, rows.split(batch_size), skip_special=spec.skip_special,
                                  skip_first=spec.skip_first, dtype=dtype))
            part = shard.with_name(shard.name + ".tmp")
            save_file({k: v.contiguous() for k, v in cat_chunks(chunks).items()}, str(part))
            os.replace(part, shard)
        bar.update(len(rows))
    bar.close()
    n_tokens = sum(_shard_rows(tmp / f"shard_{i:05d}.safetensors") for i in range(len(shard_starts)))
    (tmp / "spec.json").write_text(json.dumps({**asdict(spec), "n_tokens": n_tokens, "n_shards": len(shard_starts),
                                               "windows_sha1": fingerprint}))
    plan_file.unlink()
    os.replace(tmp, path)
    return n_tokens


def _shard_rows(shard: Path) -> int:
    with safe_open(str(shard), "pt") as handle:
        return handle.get_slice(next(iter(handle.keys()))).get_shape()[0]


def _save_shard(folder: Path, index: int, chunk: Chunk) -> None:
    save_file({k: v.contiguous() for k, v in chunk.items()}, str(folder / f"shard_{index:05d}.safetensors"))


def read_shards(path: str | os.PathLike, expect: StoreSpec) -> Iterator[Chunk]:
    """The cached chunks, after checking the cache was harvested as ``expect`` says."""
    path = Path(path)
    spec_file = path / "spec.json"
    if not spec_file.is_file():
        raise ActivationCacheError(f"no activation cache at {str(path)!r} (spec.json missing; an interrupted "
                                   "harvest leaves only a .partial folder)")
    stored = _check_spec(path, expect)
    for index in range(stored["n_shards"]):
        shard = path / f"shard_{index:05d}.safetensors"
        try:
            yield load_file(str(shard))
        except (OSError, SafetensorError) as e:
            raise ActivationCacheError(
                f"cannot read activation shard {str(shard)!r} (missing or corrupt): {e}") from e


def _check_spec(path: Path, expect: StoreSpec) -> dict:
    stored = json.loads((path / "spec.json").read_text())
    stored["hook_names"] = tuple(stored["hook_names"])
    differing = {k: (stored.get(k), v) for k, v in asdict(expect).items() if stored.get(k) != v}
    if differing:
        detail = "; ".join(f"{k}: cached {a!r}, wanted {b!r}" for k, (a, b) in differing.items())
        raise ActivationCacheMismatchError(
            f"the activation cache at {str(path)!r} was harvested differently: {detail}")
    return stored


def training_batches(path: str | os.PathLike, spec: StoreSpec, batch_size: int, *, input_name: str | None = None,
                     target_name: str | None = None, buffer_tokens: int = 262144, seed: int = 0,
                     epochs: int = 1, outlier_ratio: float | None = 10.0, split_across_ranks: bool = True):
    """A deterministic batch source for `train.train_sae` from a disk cache: each call re-reads
    the shards and re-shuffles them with ``seed``, yielding ``(x [b, d_in], target [b, d_out])``
    (target = x for an SAE; another cached name for a transcoder) for ``epochs`` passes.
    Tokens whose input norm is over ``outlier_ratio`` times the shard's median (`massive_tokens`)
    are dropped. Under ``torch.distributed`` with ``split_across_ranks`` (one cache shared by all
    ranks) each rank gets its share of every global batch of ``batch_size``; without it (each
    rank reads its own cache) every rank gets whole batches of ``batch_size``."""
    input_name = input_name or spec.hook_names[0]
    target_name = target_name or input_name
    for name in (input_name, target_name):
        if name not in spec.hook_names:
            raise ActivationCacheMismatchError(f"{name!r} is not in the cache (it holds {list(spec.hook_names)})")

    def without_outliers(chunks: Iterable[Chunk]) -> Iterator[Chunk]:
        for chunk in chunks:
            keep = ~massive_tokens(chunk[input_name], outlier_ratio)
            yield {k: v[keep] for k, v in chunk.items()}

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for epoch in range(epochs):
            buffer = ShuffleBuffer(buffer_tokens, seed=seed + epoch)
            for batch in buffer.mix(without_outliers(read_shards(path, spec)), batch_size):
                if n_rows(batch) == batch_size:  # the short tail is dropped: every step sees a full batch
                    x, target = batch[input_name], batch[target_name]
                    yield (local_rows(x), local_rows(target)) if split_across_ranks else (x, target)

    return batches
