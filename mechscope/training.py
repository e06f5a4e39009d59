"""One resumable training loop for every trainer (SAEs and transcoders, the tuned lens, the
toys): deterministic per-step data, atomic checkpoints, exact resume, tqdm progress.

    loop = TrainingLoop(steps, optimizer=opt, checkpoint=out / "checkpoint.safetensors",
                        checkpoint_every=100, settings=asdict(config))
    restored = loop.restore()              # tensors of the last checkpoint (or None); loop.start is its step
    if restored is not None:
        module.load_state_dict(restored)
    def step(i):                           # one optimisation step; returns what the progress bar shows
        batch = data(step_generator(seed, i))
        ...
        return {"loss": f"{loss.item():.3f}"}
    finished = loop.run(step, lambda: (module.state_dict(), {}))

Exactness: the data of step ``i`` depends on ``(seed, i)`` only (`step_generator`), or is the
``i``-th item of a deterministic source that a resumed run replays (`StepBatches`), and the
checkpoint holds everything the next step reads (weights, optimizer state, counters), so a
run resumed from any checkpoint ends with the weights of an uninterrupted one. A checkpoint
also records the run's ``settings`` (resuming with others raises `CheckpointMismatchError`),
its ``step``, and ``runs``: the ``[first, end)`` steps each run that led to it executed, e.g.
``[[0, 40], [40, 60]]`` for a run killed after step 40 and resumed (`checkpoint_history`).
Under ``torch.distributed`` rank 0 writes checkpoints and shows progress, and every rank must
resume from the same step.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Generic, TypeVar

import torch
from tqdm.auto import tqdm

from .checkpoint import checkpoint_meta, load_checkpoint, save_checkpoint
from .distributed import barrier, check_same_step, is_writer
from .errors import BatchSourceExhaustedError, CheckpointMismatchError, SelectionError

Batch = TypeVar("Batch")
StepFn = Callable[[int], Mapping[str, Any] | None]  # step index -> progress-bar fields (or None)
StateFn = Callable[[], tuple[dict[str, torch.Tensor], dict]]  # () -> (tensors, extra JSON metadata)


def checkpoint_history(path: str | os.PathLike) -> tuple[int, list[list[int]]]:
    """``(step, runs)`` of the checkpoint at ``path``: the step it was written at and the
    ``[first, end)`` steps each run that led to it executed (one entry per start or resume)."""
    meta = checkpoint_meta(path)
    return int(meta["step"]), [list(r) for r in meta.get("runs", [])]


def step_generator(seed: int, step: int) -> torch.Generator:
    """The random generator of step ``step`` of a run seeded with ``seed`` (seeded with
    ``seed * 1_000_003 + step``): what a step draws does not depend on the steps before it."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


class StepBatches(Generic[Batch]):
    """Step-indexed access to a deterministic batch source ``batches`` (a callable returning a
    fresh iterator, e.g. `sae.store.training_batches`): ``source(step)`` is its ``step``-th item.
    A run resumed at ``start`` draws and drops the first ``start`` items up front, so step
    ``i`` sees the batch it would have seen without the interruption. Steps must come in order;
    a source that runs out raises `BatchSourceExhaustedError`."""

    def __init__(self, batches: Callable[[], Iterator[Batch]], *, start: int = 0, steps: int | None = None):
        self._iterator = batches()
        self._next = 0
        self._steps = steps
        for step in range(start):
            self(step)

    def __call__(self, step: int) -> Batch:
        if step != self._next:
            raise SelectionError(f"batches are drawn in step order: step {self._next} is next, not {step}")
        try:
            batch = next(self._iterator)
        except StopIteration:
            of = f" of {self._steps}" if self._steps is not None else ""
            raise BatchSourceExhaustedError(f"the batch source ran out after {step}{of} steps: give it more data "
                                            "(or more epochs) or train fewer steps") from None
        self._next += 1
        return batch


class TrainingLoop:
    """Runs steps ``start .. steps - 1`` (or to ``stop_after``), checkpointing every
    ``checkpoint_every`` steps, at ``stop_after`` and at the end.

    optimizer: saved with every checkpoint and restored by `restore`.
    checkpoint: the checkpoint file (None: no checkpoints, no resume).
    settings: JSON-serialisable description of the run; a checkpoint written with other
      settings refuses to be resumed.
    resume: `restore` continues from an existing checkpoint (otherwise it starts afresh).
    stop_after: end after this many steps, as if killed (to exercise resuming).
    """

    def __init__(self, steps: int, *, optimizer: torch.optim.Optimizer | None = None,
                 checkpoint: str | os.PathLike | None = None, checkpoint_every: int = 500,
                 settings: Mapping[str, Any] | None = None, resume: bool = True, stop_after: int | None = None,
                 progress: bool = True, desc: str = "train"):
        if steps < 0 or checkpoint_every < 1:
            raise SelectionError(f"steps must be >= 0 and checkpoint_every >= 1, got {steps} and {checkpoint_every}")
        self.steps = steps
        self.optimizer = optimizer
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        self.checkpoint_every = checkpoint_every
        self.settings = json.loads(json.dumps(dict(settings or {})))  # as it reads back from the file
        self.resume = resume
        self.stop_after = stop_after
        self.desc = desc
        self.writer = is_writer()
        self.show_progress = progress and self.writer
        self.start = 0
        self.steps_run = 0  # steps this run executed (after `run`)
        self.meta: dict = {}  # the restored checkpoint's extra metadata
        self.history: list[list[int]] = []  # the restored checkpoint's runs: [first, end) steps of each

    @property
    def end(self) -> int:
        """The step this run stops at: ``steps``, or ``stop_after`` when that comes first."""
        return self.steps if self.stop_after is None else max(0, min(self.steps, self.stop_after))

    def restore(self) -> dict[str, torch.Tensor] | None:
        """The tensors of the checkpoint to resume from (restoring the optimizer in place and
        setting `start` and `meta`), or None when starting afresh. Under data parallel every
        rank must call it and resume from the same step."""
        tensors = None
        if self.resume and self.checkpoint is not None and self.checkpoint.is_file():
            stored = checkpoint_meta(self.checkpoint)
            if stored.get("settings") != self.settings:
                old = stored.get("settings") or {}
                differing = sorted(k for k in {*old, *self.settings} if old.get(k) != self.settings.get(k))
                raise CheckpointMismatchError(
                    f"checkpoint {self.checkpoint} was written with other settings (differing: "
                    f"{', '.join(differing)}): {old}; resume with those or use another folder")
            tensors, meta = load_checkpoint(self.checkpoint, self.optimizer)
            self.start = int(meta.pop("step"))
            meta.pop("settings")
            self.history = meta.pop("runs", [])
            self.meta = meta
        if self.resume:
            check_same_step(self.start)
        return tensors

    def run(self, step: StepFn, state: StateFn, *, on_checkpoint: Callable[[int], None] | None = None) -> bool:
        """Call ``step(i)`` for i from `start` to `end`, writing ``state()`` (tensors and extra
        metadata) with the optimizer's state to the checkpoint when one is due (rank 0 only;
        then ``on_checkpoint(steps_done)``). Returns whether the run reached ``steps``."""
        bar = tqdm(total=self.steps, initial=self.start, disable=not self.show_progress, desc=self.desc)
        self.steps_run = 0
        for index in range(self.start, self.end):
            shown = step(index)
            if shown and self.show_progress:
                bar.set_postfix(shown)
            bar.update(1)
            done = index + 1
            self.steps_run += 1
            if self._due(done):
                tensors, extra = state()
                self.checkpoint.parent.mkdir(parents=True, exist_ok=True)
                runs = [*self.history, [self.start, done]]
                save_checkpoint(self.checkpoint, tensors,
                                {**extra, "settings": self.settings, "step": done, "runs": runs}, self.optimizer)
                if on_checkpoint is not None:
                    on_checkpoint(done)
        bar.close()
        barrier()  # no rank leaves while rank 0 is still writing the last checkpoint
        return self.end == self.steps

    def _due(self, done: int) -> bool:
        if self.checkpoint is None or not self.writer:
            return False
        return done % self.checkpoint_every == 0 or done == self.steps or done == self.stop_after
