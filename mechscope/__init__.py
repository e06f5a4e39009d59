"""mechscope: mechanistic interpretability for any Hugging Face causal LM.

    import mechscope as ms
    model = ms.load("smollm2-135m")
    logits, cache = model.run_with_cache("The capital of France is", names="blocks.*.resid_post")

Every public name is imported on first use (module ``__getattr__``), so ``import mechscope``
and the ``mechscope`` command's ``--help`` / ``--version`` do not import torch or transformers;
``from mechscope import X`` and ``ms.X`` work as usual.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

from .errors import (  # the rest, and every class's meaning: mechscope.errors and docs/errors.md
    ContextLengthWarning,
    HookShapeError,
    MechscopeError,
    MechscopeWarning,
    MetricError,
    ModelNotFoundError,
    SelectionError,
    TokenIdError,
    UnknownActivationError,
    UnsupportedArchitectureError,
)

__version__ = "0.1.0"

# public name -> the module defining it (imported when the name is first read)
_LAZY: dict[str, str] = {
    "composition_scores": ".analysis.weight_circuits",
    "copying_scores": ".analysis.weight_circuits",
    "full_ov_circuit": ".analysis.weight_circuits",
    "ov_circuit": ".analysis.weight_circuits",
    "qk_circuit": ".analysis.weight_circuits",
    "DLAResult": ".analysis.dla",
    "direct_logit_attribution": ".analysis.dla",
    "FactoredMatrix": ".analysis.factored",
    "HeadScores": ".analysis.heads",
    "detection_masks": ".analysis.heads",
    "head_scores": ".analysis.heads",
    "LensResult": ".analysis.lens",
    "logit_lens": ".analysis.lens",
    "TunedLens": ".analysis.tuned_lens",
    "lens_kl": ".analysis.tuned_lens",
    "train_tuned_lens": ".analysis.tuned_lens",
    "Circuit": ".circuits.result",
    "CircuitScores": ".circuits.result",
    "FaithfulnessCurve": ".circuits.result",
    "acdc": ".circuits.acdc",
    "eap": ".circuits.eap",
    "eap_ig": ".circuits.eap",
    "edge_pruning": ".circuits.pruning",
    "faithfulness": ".circuits.faithfulness",
    "ablate": ".causal.ablation",
    "ablation_hooks": ".causal.ablation",
    "resample_rows": ".causal.ablation",
    "attribution_patching": ".causal.attribution",
    "COMPONENTS": ".causal.cells",
    "answer_logprob": ".causal.metrics",
    "kl_to": ".causal.metrics",
    "logit_diff": ".causal.metrics",
    "normalized": ".causal.metrics",
    "prob_diff": ".causal.metrics",
    "activation_patching": ".causal.patching",
    "path_patching": ".causal.path_patching",
    "PatchingResult": ".causal.result",
    "CausalTrace": ".causal.tracing",
    "causal_trace": ".causal.tracing",
    "AttributionGraph": ".graphs.result",
    "TranscoderSet": ".graphs.transcoders",
    "attribution_graph": ".graphs.attribution",
    "feature_labels": ".graphs.labels",
    "GraphAggregate": ".graphs.aggregate",
    "aggregate_graphs": ".graphs.aggregate",
    "subgraph_faithfulness": ".graphs.faithfulness",
    "HeadLoadings": ".graphs.heads",
    "head_loadings": ".graphs.heads",
    "feature_activations": ".graphs.interventions",
    "feature_intervention": ".graphs.interventions",
    "generate_with_features": ".graphs.interventions",
    "TranscoderSetEvaluation": ".graphs.evaluate",
    "evaluate_transcoders": ".graphs.evaluate",
    "load_transcoders": ".graphs.formats",
    "save_transcoders": ".graphs.formats",
    "train_transcoders": ".graphs.training",
    "FactPrompt": ".data.facts",
    "fact_prompts": ".data.facts",
    "make_fact": ".data.facts",
    "GreaterThanTask": ".data.greater_than",
    "greater_than": ".data.greater_than",
    "greater_than_prob_diff": ".data.greater_than",
    "harvest": ".data.harvest",
    "ioi": ".data.ioi",
    "ioi_positions": ".data.ioi",
    "repeated_random_tokens": ".data.repeated",
    "PromptPairs": ".data.tasks",
    "induction_pairs": ".data.tasks",
    "pairs_from_strings": ".data.tasks",
    "ActivationCache": ".models.cache",
    "ModelConfig": ".models.config",
    "HookPoint": ".models.hook_points",
    "HookedModel": ".models.hooked",
    "Target": ".models.hooked",
    "at": ".models.hooked",
    "load": ".models.loading",
    "HookContext": ".models.runtime",
    "PerPrompt": ".models.selection",
    "LayerWeights": ".models.weights",
    "Weights": ".models.weights",
    "SAEEvaluation": ".sae.evaluate",
    "evaluate_sae": ".sae.evaluate",
    "FeatureData": ".sae.features",
    "LatentReport": ".sae.features",
    "collect_features": ".sae.features",
    "load_sae": ".sae.formats",
    "save_saelens": ".sae.formats",
    "SAE": ".sae.modules",
    "SAEConfig": ".sae.modules",
    "splice_hooks": ".sae.splice",
    "StoreSpec": ".sae.store",
    "harvest_to_disk": ".sae.store",
    "training_batches": ".sae.store",
    "TrainConfig": ".sae.train",
    "init_sae": ".sae.train",
    "train_sae": ".sae.train",
    "InductionToyConfig": ".toys.induction",
    "cached_induction_model": ".toys.induction",
    "train_induction_model": ".toys.induction",
}
# Specialists' tiers: ms.adapters (adding a model family), ms.extend (writing a method),
# ms.circuits (graphs, edge interventions, selection, exports),
# ms.sae (SAE internals: store, architectures, formats, ...), ms.viz (figures and HTML/PNG writers).
_TIERS = ("adapters", "circuits", "extend", "sae", "viz")

if TYPE_CHECKING:  # what the names are, for type checkers and IDEs
    from . import adapters, circuits, extend, sae, viz
    from .analysis.dla import DLAResult, direct_logit_attribution
    from .analysis.factored import FactoredMatrix
    from .analysis.heads import HeadScores, detection_masks, head_scores
    from .analysis.lens import LensResult, logit_lens
    from .analysis.tuned_lens import TunedLens, lens_kl, train_tuned_lens
    from .analysis.weight_circuits import composition_scores, copying_scores, full_ov_circuit, ov_circuit, qk_circuit
    from .causal.ablation import ablate, ablation_hooks, resample_rows
    from .causal.attribution import attribution_patching
    from .causal.cells import COMPONENTS
    from .causal.metrics import answer_logprob, kl_to, logit_diff, normalized, prob_diff
    from .causal.patching import activation_patching
    from .causal.path_patching import path_patching
    from .causal.result import PatchingResult
    from .causal.tracing import CausalTrace, causal_trace
    from .circuits.acdc import acdc
    from .circuits.eap import eap, eap_ig
    from .circuits.faithfulness import faithfulness
    from .circuits.pruning import edge_pruning
    from .circuits.result import Circuit, CircuitScores, FaithfulnessCurve
    from .data.facts import FactPrompt, fact_prompts, make_fact
    from .data.greater_than import GreaterThanTask, greater_than, greater_than_prob_diff
    from .data.harvest import harvest
    from .data.ioi import ioi, ioi_positions
    from .data.repeated import repeated_random_tokens
    from .data.tasks import PromptPairs, induction_pairs, pairs_from_strings
    from .graphs.aggregate import GraphAggregate, aggregate_graphs
    from .graphs.attribution import attribution_graph
    from .graphs.evaluate import TranscoderSetEvaluation, evaluate_transcoders
    from .graphs.faithfulness import subgraph_faithfulness
    from .graphs.formats import load_transcoders, save_transcoders
    from .graphs.heads import HeadLoadings, head_loadings
    from .graphs.interventions import feature_activations, feature_intervention, generate_with_features
    from .graphs.labels import feature_labels
    from .graphs.result import AttributionGraph
    from .graphs.training import train_transcoders
    from .graphs.transcoders import TranscoderSet
    from .models.cache import ActivationCache
    from .models.config import ModelConfig
    from .models.hook_points import HookPoint
    from .models.hooked import HookedModel, Target, at
    from .models.loading import load
    from .models.runtime import HookContext
    from .models.selection import PerPrompt
    from .models.weights import LayerWeights, Weights
    from .sae.evaluate import SAEEvaluation, evaluate_sae
    from .sae.features import FeatureData, LatentReport, collect_features
    from .sae.formats import load_sae, save_saelens
    from .sae.modules import SAE, SAEConfig
    from .sae.splice import splice_hooks
    from .sae.store import StoreSpec, harvest_to_disk, training_batches
    from .sae.train import TrainConfig, init_sae, train_sae
    from .toys.induction import InductionToyConfig, cached_induction_model, train_induction_model


def __getattr__(name: str) -> Any:
    """Import a public name (or a submodule, e.g. ``ms.sae``) on first access and keep it."""
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    elif name in _TIERS or (not name.startswith("__") and importlib.util.find_spec(f"{__name__}.{name}")):
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


__all__ = [
    "COMPONENTS",
    "SAE",
    "ActivationCache",
    "AttributionGraph",
    "CausalTrace",
    "Circuit",
    "CircuitScores",
    "ContextLengthWarning",
    "DLAResult",
    "FactPrompt",
    "FactoredMatrix",
    "FaithfulnessCurve",
    "FeatureData",
    "GraphAggregate",
    "GreaterThanTask",
    "HeadLoadings",
    "HeadScores",
    "HookContext",
    "HookPoint",
    "HookShapeError",
    "HookedModel",
    "InductionToyConfig",
    "LatentReport",
    "LayerWeights",
    "LensResult",
    "MechscopeError",
    "MechscopeWarning",
    "MetricError",
    "ModelConfig",
    "ModelNotFoundError",
    "PatchingResult",
    "PerPrompt",
    "PromptPairs",
    "SAEConfig",
    "SAEEvaluation",
    "SelectionError",
    "StoreSpec",
    "Target",
    "TokenIdError",
    "TrainConfig",
    "TranscoderSet",
    "TranscoderSetEvaluation",
    "TunedLens",
    "UnknownActivationError",
    "UnsupportedArchitectureError",
    "Weights",
    "__version__",
    "ablate",
    "ablation_hooks",
    "acdc",
    "activation_patching",
    "adapters",
    "aggregate_graphs",
    "answer_logprob",
    "at",
    "attribution_graph",
    "attribution_patching",
    "cached_induction_model",
    "causal_trace",
    "circuits",
    "collect_features",
    "composition_scores",
    "copying_scores",
    "detection_masks",
    "direct_logit_attribution",
    "eap",
    "eap_ig",
    "edge_pruning",
    "evaluate_sae",
    "evaluate_transcoders",
    "extend",
    "fact_prompts",
    "faithfulness",
    "feature_activations",
    "feature_intervention",
    "feature_labels",
    "full_ov_circuit",
    "generate_with_features",
    "greater_than",
    "greater_than_prob_diff",
    "harvest",
    "harvest_to_disk",
    "head_loadings",
    "head_scores",
    "induction_pairs",
    "init_sae",
    "ioi",
    "ioi_positions",
    "kl_to",
    "lens_kl",
    "load",
    "load_sae",
    "load_transcoders",
    "logit_diff",
    "logit_lens",
    "make_fact",
    "normalized",
    "ov_circuit",
    "pairs_from_strings",
    "path_patching",
    "prob_diff",
    "qk_circuit",
    "repeated_random_tokens",
    "resample_rows",
    "sae",
    "save_saelens",
    "save_transcoders",
    "splice_hooks",
    "subgraph_faithfulness",
    "train_induction_model",
    "train_sae",
    "train_transcoders",
    "train_tuned_lens",
    "training_batches",
    "viz",
]
