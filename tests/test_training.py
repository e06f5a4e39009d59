"""The resumable training loop: a resumed run executes only the remaining steps and ends with
the uninterrupted run's weights; checkpoints record their step and settings; step-indexed
batch sources replay what a resumed run skipped."""

from __future__ import annotations

import pytest
import torch

from mechscope.checkpoint import checkpoint_meta
from mechscope.errors import BatchSourceExhaustedError, CheckpointMismatchError, MechscopeError, SelectionError
from mechscope.training import StepBatches, TrainingLoop, step_generator

STEPS, SEED = 20, 3
TRUE_W = torch.arange(1.0, 5.0)


def _train(folder, *, stop_after=None, resume=True, settings=None):
    """Least squares on y = x @ TRUE_W; returns (weights, steps run in this call, finished)."""
    weight = torch.nn.Parameter(torch.zeros(4))
    optimizer = torch.optim.Adam([weight], lr=0.05)
    loop = TrainingLoop(STEPS, optimizer=optimizer, checkpoint=folder / "checkpoint.safetensors", checkpoint_every=6,
                        settings=settings or {"seed": SEED, "steps": STEPS}, resume=resume, stop_after=stop_after,
                        progress=False)
    restored = loop.restore()
    if restored is not None:
        with torch.no_grad():
            weight.copy_(restored["weight"])
    ran = []

    def step(index):
        ran.append(index)
        x = torch.randn(16, 4, generator=step_generator(SEED, index))
        loss = (x @ weight - x @ TRUE_W).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return {"loss": f"{loss.item():.3f}"}

    finished = loop.run(step, lambda: ({"weight": weight.detach()}, {"note": "extra"}))
    return weight.detach().clone(), ran, finished


def test_resume_runs_only_the_remaining_steps_and_matches_the_uninterrupted_run(tmp_path):
    straight, ran, finished = _train(tmp_path / "a")
    assert ran == list(range(STEPS)) and finished

    _, ran, finished = _train(tmp_path / "b", stop_after=9)  # "killed" after step 9
    assert ran == list(range(9)) and not finished
    meta = checkpoint_meta(tmp_path / "b" / "checkpoint.safetensors")
    assert meta["step"] == 9 and meta["note"] == "extra" and meta["settings"] == {"seed": SEED, "steps": STEPS}

    resumed, ran, finished = _train(tmp_path / "b")
    assert ran == list(range(9, STEPS)) and finished  # only the 11 remaining steps ran
    assert torch.equal(resumed, straight)
    assert checkpoint_meta(tmp_path / "b" / "checkpoint.safetensors")["step"] == STEPS

    again, ran, _ = _train(tmp_path / "b")  # a finished run resumes to nothing
    assert ran == [] and torch.equal(again, straight)
    _, ran, _ = _train(tmp_path / "b", resume=False)  # resume=False starts over
    assert ran == list(range(STEPS))


def test_checkpoints_fall_every_n_steps_at_stop_after_and_at_the_end(tmp_path):
    written = []
    weight = torch.nn.Parameter(torch.zeros(2))
    loop = TrainingLoop(14, optimizer=torch.optim.SGD([weight], lr=0.1), checkpoint=tmp_path / "c.safetensors",
                        checkpoint_every=5, progress=False)
    loop.run(lambda i: None, lambda: ({"weight": weight.detach()}, {}), on_checkpoint=written.append)
    assert written == [5, 10, 14]
    assert loop.restore() is not None and loop.start == 14


def test_resuming_with_other_settings_is_refused(tmp_path):
    _train(tmp_path, stop_after=6)
    with pytest.raises(CheckpointMismatchError, match="other settings .*differing: steps") as caught:
        _train(tmp_path, settings={"seed": SEED, "steps": STEPS + 1})
    assert isinstance(caught.value, MechscopeError) and isinstance(caught.value, ValueError)


def test_step_generators_are_independent_of_history():
    first = torch.randint(0, 1000, (5,), generator=step_generator(7, 12))
    assert torch.equal(first, torch.randint(0, 1000, (5,), generator=step_generator(7, 12)))
    assert not torch.equal(first, torch.randint(0, 1000, (5,), generator=step_generator(7, 13)))
    assert not torch.equal(first, torch.randint(0, 1000, (5,), generator=step_generator(8, 12)))


def test_step_batches_replay_the_skipped_items_and_say_when_the_source_runs_out():
    def source():
        return iter(range(100, 105))

    resumed = StepBatches(source, start=3, steps=5)
    assert resumed(3) == 103 and resumed(4) == 104
    with pytest.raises(BatchSourceExhaustedError, match="ran out after 5 of 5 steps"):
        resumed(5)
    with pytest.raises(SelectionError, match="step order"):
        StepBatches(source)(2)
