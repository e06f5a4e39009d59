"""mechscope: mechanistic interpretability for any Hugging Face causal LM.

    import mechscope as ms
    model = ms.load("smollm2-135m")
    logits, cache = model.run_with_cache("The capital of France is", names="blocks.*.resid_post")
"""

from .analysis.circuits import composition_scores, copying_scores, full_ov_circuit, ov_circuit, qk_circuit
from .analysis.dla import DLAResult, direct_logit_attribution
from .analysis.factored import FactoredMatrix
from .analysis.heads import HeadScores, detection_masks, head_scores
from .analysis.lens import LensResult, logit_lens
from .analysis.tuned_lens import TunedLens, lens_kl, train_tuned_lens
from .data.repeated import repeated_random_tokens
from .toys.induction import InductionToyConfig, cached_induction_model, train_induction_model
from .errors import (
    HookShapeError,
    MechscopeError,
    ModelNotFoundError,
    SelectionError,
    UnknownActivationError,
    UnsupportedArchitectureError,
)
from .models.adapters import ADAPTERS, get_adapter, register_adapter
from .models.adapters.base import Adapter, FusedQKV, NormSpec, Proj, Site, WeightLayout
from .models.cache import ActivationCache
from .models.config import ModelConfig
from .models.hook_points import HookPoint
from .models.hooked import HookedModel, Target, at
from .models.loading import load
from .models.runtime import HookContext
from .models.selection import PerPrompt
from .models.weights import LayerWeights, Weights

__version__ = "0.1.0"

__all__ = [
    "ADAPTERS",
    "ActivationCache",
    "DLAResult",
    "InductionToyConfig",
    "TunedLens",
    "cached_induction_model",
    "lens_kl",
    "train_induction_model",
    "train_tuned_lens",
    "FactoredMatrix",
    "HeadScores",
    "LensResult",
    "composition_scores",
    "copying_scores",
    "detection_masks",
    "direct_logit_attribution",
    "full_ov_circuit",
    "head_scores",
    "logit_lens",
    "ov_circuit",
    "qk_circuit",
    "repeated_random_tokens",
    "Adapter",
    "FusedQKV",
    "NormSpec",
    "Proj",
    "Site",
    "WeightLayout",
    "register_adapter",
    "HookContext",
    "HookPoint",
    "HookShapeError",
    "HookedModel",
    "LayerWeights",
    "MechscopeError",
    "ModelConfig",
    "ModelNotFoundError",
    "PerPrompt",
    "SelectionError",
    "Target",
    "UnknownActivationError",
    "UnsupportedArchitectureError",
    "Weights",
    "at",
    "get_adapter",
    "load",
    "__version__",
]
