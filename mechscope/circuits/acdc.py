"""ACDC (Conmy et al. 2023): greedy pruning of edges in reverse topological order.

Destinations are visited from the logits back to the first layer; for each, its incoming
edges from the latest source back. An edge is removed when removing it from the current
circuit worsens the metric by less than ``threshold``: for the default metric, the KL
divergence from the clean model's output distribution (lower is better), removal is kept when
KL(without e) - KL(current) < threshold. With a task metric this one-sided rule accepts every
removal that *raises* the metric, so the circuit can drift far above the clean model's value;
``absolute=True`` (Conmy et al.'s ``abs_value_threshold``) removes an edge only when the metric
moves by less than ``threshold`` either way.

Each decision depends on the ones before it, so the edges cannot be tested independently.
They are tested *speculatively*, ``variants_per_pass`` at a time in one edge-patched forward
(variants stacked on the batch axis): variant j removes the next j candidates, assuming every
one before it is removed too. Walking the variants in order, each accepted removal makes the
next variant's comparison exact (its circuit is the current one minus one more edge); at the
first rejected edge the later variants are stale and the walk restarts after it. The decisions
are therefore exactly those of one-edge-at-a-time ACDC (tested), in far fewer forwards when
most edges are removed, which is ACDC's usual regime. As in Conmy et al.'s implementation, a
destination whose node no longer feeds anything (every outgoing edge removed; those were all
decided earlier, the walk being reverse topological) is skipped: its edges are removed untested,
since with the node's output read by no one their removal changes the logits only by rounding.
Since every edge into an earlier layer is still in the circuit when a destination is tested, the run up to that destination's layer is the
clean run: each forward starts there (`interventions.CleanPrefix`, `HookedModel.run_from`), and
metrics that read only the answer positions get logits only there. Under ``torchrun`` each rank runs a
contiguous share of the prompts and the metric sums are all-reduced before each decision.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from ..causal.metrics import answer_logits_view, checked_metric, kl_to
from ..data.tasks import PromptPairs
from ..errors import SelectionError
from ..training import TrainingLoop
from .graph import Graph
from .interventions import CleanPrefix, ablated_sources, patched_logits, pruned_weights
from .result import Circuit
from .selection import nodes_of, prune
from .sharding import local_pairs, summed

ACDC_ABLATIONS = ("corrupted", "zero")


def acdc_order(graph: Graph) -> list[tuple[int, int]]:
    """The real edges ``(src, dst)`` in ACDC's visiting order: destinations from the logits
    back (reverse topological), each one's sources from the latest writer back."""
    order = []
    for dst in range(graph.n_dst - 1, -1, -1):
        sources = graph.real[:, dst].nonzero()[:, 0].tolist()
        order += [(src, dst) for src in reversed(sources)]
    return order


def acdc(model, pairs: PromptPairs, threshold: float, metric: Callable | None = None, *,
         higher_is_better: bool | None = None, absolute: bool = False, ablation: str = "corrupted",
         variants_per_pass: int = 8,
         buffer_dtype: torch.dtype | None = None, skip_unread: bool = True, prune_dangling: bool = True,
         out: str | Path | None = None, resume: bool = False, checkpoint_every: int = 1000,
         progress: bool = True, on_checkpoint: Callable[[int], None] | None = None) -> Circuit:
    """The ACDC circuit of ``pairs`` (clean prompts, edges ablated to the corrupted run).

    threshold: the largest worsening of the mean metric a removal may cause (tau).
    metric: ``metric(logits, pairs) -> [batch]``; default KL from the clean run's distribution
      at the answer position (``kl_to``), lower is better. For a task metric such as
      ``logit_diff`` pass ``higher_is_better=True`` (the default for any metric given).
    absolute: remove an edge only when ``|change of the metric| < threshold`` (see module).
    ablation: what removed edges carry, ``"corrupted"`` or ``"zero"``.
    variants_per_pass: candidate removals tested per forward (speculatively, see module); it
      changes the forwards, not the decisions, so a run may resume with another value.
    skip_unread: remove, untested, the edges into nodes whose every outgoing edge is removed.
    prune_dangling: finally drop edges of nodes left with no path from the input to the logits.
    out / resume / checkpoint_every / on_checkpoint: the walk is a `TrainingLoop` with one step
      per edge in visiting order (the tqdm bar counts edges): the decisions so far are
      checkpointed in ``out`` every ``checkpoint_every`` edges, and a resumed run makes the
      decisions of an uninterrupted one.
    Returns a `Circuit` whose ``scores`` `[n_src, n_dst]` hold each tested edge's change of the
    mean metric when it was tested (worsening > 0; NaN for edges removed untested), and whose
    ``selection`` names tau, the edge evaluations, the forwards used and the edges skipped.
    """
    if ablation not in ACDC_ABLATIONS:
        raise SelectionError(f"ACDC ablation must be one of {ACDC_ABLATIONS}, got {ablation!r}")
    if variants_per_pass < 1:
        raise SelectionError(f"variants_per_pass must be at least 1, got {variants_per_pass}")
    if resume and out is None:
        raise SelectionError("resume=True needs the run's out folder")
    threshold = float(threshold)
    graph = Graph.from_model(model)
    n_total, pairs = len(pairs), local_pairs(pairs)
    metric_name = "kl" if metric is None else getattr(metric, "__name__", "metric")
    with torch.no_grad():
        ablated = ablated_sources(model, graph, pairs.corrupted, ablation)
        prefix = CleanPrefix(model, graph, pairs.clean, ablated)  # one clean forward, its logits kept
    if metric is None:
        metric, higher_is_better = kl_to(prefix.logits, pairs), bool(higher_is_better)
    elif higher_is_better is None:
        higher_is_better = True
    metric = checked_metric(metric)
    sign = -1.0 if higher_is_better else 1.0  # worsening = sign * (new - old)
    logits_at, view = answer_logits_view(metric, pairs)  # answer-only metrics: unembed there alone

    def evaluate(masks: list[torch.Tensor]) -> list[float]:
        W = pruned_weights(graph, torch.stack(masks).to(model.device))
        with torch.no_grad():
            logits = patched_logits(model, graph, pairs.clean, ablated, W, buffer_dtype=buffer_dtype,
                                    logits_at=logits_at, prefix=prefix)
            values = metric(logits, view.tile(len(masks))).double().reshape(len(masks), -1).sum(-1)
        summed(values)  # every rank takes the same decisions
        return (values / n_total).tolist()

    order, owners, logits_dst = acdc_order(graph), graph.owner, graph.n_dst - 1
    settings = {"threshold": threshold, "metric": metric_name, "higher_is_better": higher_is_better, "absolute": absolute,
                "ablation": ablation, "skip_unread": skip_unread, "n_prompts": n_total, "graph": graph.cfg}
    loop = TrainingLoop(len(order), checkpoint=Path(out) / "acdc.safetensors" if out is not None else None,
                        checkpoint_every=checkpoint_every, resume=resume, progress=progress, settings=settings,
                        desc="ACDC edges")
    restored = loop.restore()
    if restored is None:
        keep = graph.real.clone()
        worsening = torch.full((graph.n_src, graph.n_dst), torch.nan)
        walk = {"decided": 0, "current": evaluate([keep])[0], "forwards": 1, "evaluations": 1, "skipped": 0}
    else:
        keep, worsening = restored["keep"].clone(), restored["worsening"].clone()
        walk = dict(loop.meta["walk"])

    def alive(dst: int) -> bool:  # the destination's node still writes to a kept edge
        return not skip_unread or dst == logits_dst or bool(keep[owners[:, dst]].any())

    def step(index: int) -> dict[str, int] | None:
        """Decide edge ``index`` and, speculatively, as many after it as one forward allows."""
        if index < walk["decided"]:
            return None  # decided by an earlier step's forward
        if not alive(order[index][1]):  # nothing reads this node: its edges go untested
            keep[order[index]] = False
            walk["decided"], walk["skipped"] = index + 1, walk["skipped"] + 1
            return None
        batch = order[index:index + variants_per_pass]
        batch = batch[:next((k for k, (_, dst) in enumerate(batch) if not alive(dst)), len(batch))]
        masks, trial = [], keep.clone()
        for src, dst in batch:  # variant j: the next j candidates removed
            trial = trial.clone()
            trial[src, dst] = False
            masks.append(trial)
        values = evaluate(masks)
        walk["forwards"], walk["evaluations"] = walk["forwards"] + 1, walk["evaluations"] + len(masks)
        for (src, dst), value in zip(batch, values):
            if not alive(dst):  # an accepted removal above left this node unread: skip it
                break
            walk["decided"] += 1
            change = sign * (value - walk["current"])
            worsening[src, dst] = change
            if (abs(change) if absolute else change) < threshold:  # removed: the next variant compares against this circuit
                keep[src, dst] = False
                walk["current"] = value
            else:  # kept: the variants after it assumed its removal; test them again
                break
        return {"kept": int(keep.sum()), "forwards": walk["forwards"]}

    loop.run(step, lambda: ({"keep": keep, "worsening": worsening}, {"walk": dict(walk)}),
             on_checkpoint=on_checkpoint)
    if prune_dangling:
        keep = prune(graph, keep)
    rule = "|change| < tau" if absolute else f"{'higher' if higher_is_better else 'lower'} is better"
    how = (f"ACDC (tau={threshold:g}, {rule}; "
           f"{walk['evaluations']} edge evaluations in {walk['forwards']} forwards of {n_total} prompts; "
           f"{walk['skipped']} edges into nodes left feeding nothing removed untested)")
    return Circuit(dict(graph.cfg), worsening, keep, nodes_of(graph, keep), "ACDC", ablation, how)
