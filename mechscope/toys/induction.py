"""A 2-layer attention-only transformer that learns induction heads (Olsson et al. 2022).

The model is a Hugging Face GPT-2 whose MLPs are fixed at zero (``d_mlp = 1``, weights and
biases zero and frozen), so every block is attention-only and the result loads anywhere
as a ``GPT2LMHeadModel``, with every mechscope tool working on it unchanged. It trains on
sequences made of a random prefix and then a random segment repeated until the end. Only
the repeats are predictable, and since the segment's length (the period) and the prefix
vary from row to row, only by content: an induction circuit (a previous-token head in layer 0 feeding, by
K-composition, an induction head in layer 1). A fixed span length would let layer 0
solve it by position alone, which is not induction.

Training (`mechscope.training`) is deterministic given the seed (step ``i`` draws its batch
from a generator seeded with ``(seed, i)``), checkpoints atomically every
``checkpoint_every`` steps, and resumes from the last checkpoint with ``resume=True``: the
final weights equal those of an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from ..models.functional import next_token_loss
from ..models.hooked import HookedModel
from ..paths import cache_path
from ..training import TrainingLoop, step_generator


@dataclass(frozen=True)
class InductionToyConfig:
    n_layers: int = 2
    n_heads: int = 4
    d_model: int = 128
    d_vocab: int = 256
    seq_len: int = 64
    min_span: int = 6  # the repeated segment has a random length in [min_span, max_span]
    max_span: int = 24
    max_prefix: int = 8  # random tokens before the first copy
    batch: int = 64
    steps: int = 3000  # ~140 s on 2 CPU cores
    lr: float = 1e-3
    warmup: int = 200
    seed: int = 0
    checkpoint_every: int = 250


def repeated_span_batch(config: InductionToyConfig, step: int) -> torch.Tensor:
    """The deterministic batch of ``step``: LongTensor `[batch, seq_len]`; each row is a random
    prefix followed by a random segment of random length repeated to the end."""
    generator = step_generator(config.seed, step)
    tokens = torch.randint(0, config.d_vocab, (config.batch, config.seq_len), generator=generator)
    lengths = torch.randint(config.min_span, config.max_span + 1, (config.batch,), generator=generator).tolist()
    prefixes = torch.randint(0, config.max_prefix + 1, (config.batch,), generator=generator).tolist()
    for row, length, prefix in zip(tokens, lengths, prefixes):
        for pos in range(prefix + length, config.seq_len):
            row[pos] = row[pos - length]
    return tokens


def build_model(config: InductionToyConfig) -> GPT2LMHeadModel:
    torch.manual_seed(config.seed)
    hf_config = GPT2Config(
        vocab_size=config.d_vocab, n_positions=config.seq_len, n_embd=config.d_model, n_layer=config.n_layers,
        n_head=config.n_heads, n_inner=1, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        bos_token_id=0, eos_token_id=0, tie_word_embeddings=False,
    )
    model = GPT2LMHeadModel(hf_config)
    for block in model.transformer.h:  # attention-only: the MLP is exactly zero and stays so
        for param in block.mlp.parameters():
            param.data.zero_()
            param.requires_grad_(False)
    return model


def _lr(config: InductionToyConfig, step: int) -> float:
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    progress = (step - config.warmup) / max(1, config.steps - config.warmup)
    return config.lr * 0.5 * (1 + math.cos(math.pi * progress))


def train_induction_model(out_dir: str | os.PathLike, config: InductionToyConfig = InductionToyConfig(), *,
                          resume: bool = True, progress: bool = True, stop_after: int | None = None) -> HookedModel:
    """Train (or resume, or just load) the toy; returns it wrapped.

    ``out_dir/model`` holds the finished model in Hugging Face format (``ms.load`` reads it);
    ``out_dir/checkpoint.safetensors`` the latest training state. ``stop_after`` ends the run
    after that many steps (to exercise resuming).
    """
    out = Path(out_dir)
    final_dir = out / "model"
    if (final_dir / "config.json").is_file() and json.loads((out / "train_config.json").read_text()) == asdict(config):
        return HookedModel(GPT2LMHeadModel.from_pretrained(final_dir))
    out.mkdir(parents=True, exist_ok=True)
    model = build_model(config)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, betas=(0.9, 0.98), weight_decay=0.0)
    loop = TrainingLoop(config.steps, optimizer=optimizer, checkpoint=out / "checkpoint.safetensors",
                        checkpoint_every=config.checkpoint_every, settings=asdict(config), resume=resume,
                        stop_after=stop_after, progress=progress, desc="induction toy")
    restored = loop.restore()
    if restored is not None:
        model.load_state_dict(restored, strict=False)
    (out / "train_config.json").write_text(json.dumps(asdict(config), indent=1))
    model.train()
    began = time.perf_counter()

    def step(index: int) -> dict[str, str] | None:
        tokens = repeated_span_batch(config, index)
        for group in optimizer.param_groups:
            group["lr"] = _lr(config, index)
        loss = next_token_loss(model(tokens).logits, tokens)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return {"loss": f"{loss.item():.3f}"} if index % 50 == 0 and loop.show_progress else None

    finished = loop.run(step, lambda: (model.state_dict(), {"seconds": time.perf_counter() - began}))
    model.eval()
    if finished:
        model.save_pretrained(final_dir)
    return HookedModel(model)


def cached_induction_model(config: InductionToyConfig = InductionToyConfig(), *, progress: bool = True) -> HookedModel:
    """The toy for ``config``, trained once and kept under ``$MECHSCOPE_CACHE/toys`` (keyed by the config)."""
    key = hashlib.sha256(json.dumps(asdict(config), sort_keys=True).encode()).hexdigest()[:12]
    return train_induction_model(cache_path("toys", f"induction-{key}"), config, progress=progress)
