"""mechscope: mechanistic interpretability for any Hugging Face causal LM.

    import mechscope as ms
    model = ms.load("smollm2-135m")
    logits, cache = model.run_with_cache("The capital of France is", names="blocks.*.resid_post")
"""

from .analysis.weight_circuits import composition_scores, copying_scores, full_ov_circuit, ov_circuit, qk_circuit
from .analysis.dla import DLAResult, direct_logit_attribution
from .analysis.factored import FactoredMatrix
from .analysis.heads import HeadScores, detection_masks, head_scores
from .analysis.lens import LensResult, logit_lens
from .analysis.tuned_lens import TunedLens, lens_kl, train_tuned_lens
from .causal.ablation import ablate, ablation_hooks, resample_rows
from .causal.attribution import attribution_patching
from .causal.cells import COMPONENTS
from .causal.metrics import answer_logprob, kl_to, logit_diff, normalized, prob_diff
from .causal.patching import activation_patching
from .causal.path_patching import path_patching
from .causal.result import PatchingResult
from .causal.tracing import CausalTrace, causal_trace
from .data.facts import FactPrompt, fact_prompts, make_fact
from .data.greater_than import GreaterThanTask, greater_than, greater_than_prob_diff
from .data.harvest import harvest
from .data.ioi import ioi
from .data.repeated import repeated_random_tokens
from .data.tasks import PromptPairs, induction_pairs, pairs_from_strings
from .errors import (
    HookShapeError,
    MechscopeError,
    ModelNotFoundError,
    SelectionError,
    UnknownActivationError,
    UnsupportedArchitectureError,
)
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

# Specialists' tiers: ms.adapters (adding a model family), ms.extend (writing a method),
# ms.sae (SAE internals: store, architectures, formats, ...), ms.viz (figures and HTML/PNG writers).
from . import adapters, extend, sae, viz  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "COMPONENTS",
    "SAE",
    "ActivationCache",
    "CausalTrace",
    "DLAResult",
    "FactPrompt",
    "FactoredMatrix",
    "FeatureData",
    "GreaterThanTask",
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
    "TrainConfig",
    "TunedLens",
    "UnknownActivationError",
    "UnsupportedArchitectureError",
    "Weights",
    "__version__",
    "adapters",
    "extend",
    "sae",
    "viz",
    "ablate",
    "ablation_hooks",
    "activation_patching",
    "answer_logprob",
    "at",
    "attribution_patching",
    "cached_induction_model",
    "causal_trace",
    "collect_features",
    "composition_scores",
    "copying_scores",
    "detection_masks",
    "direct_logit_attribution",
    "evaluate_sae",
    "fact_prompts",
    "full_ov_circuit",
    "greater_than",
    "greater_than_prob_diff",
    "harvest",
    "harvest_to_disk",
    "head_scores",
    "induction_pairs",
    "init_sae",
    "ioi",
    "kl_to",
    "lens_kl",
    "load",
    "load_sae",
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
    "save_saelens",
    "splice_hooks",
    "train_induction_model",
    "train_sae",
    "train_tuned_lens",
    "training_batches",
]
