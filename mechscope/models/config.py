"""``model.cfg``: the architecture facts every method needs, read from the HF config."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from transformers import PretrainedConfig

from .adapters.base import Adapter

# Candidate HF config attributes for each field, first non-None wins.
_ATTRS = {
    "n_layers": ("num_hidden_layers", "n_layer"),
    "d_model": ("hidden_size", "n_embd"),
    "n_heads": ("num_attention_heads", "n_head"),
    "n_kv_heads": ("num_key_value_heads",),
    "d_head": ("head_dim",),
    "d_mlp": ("intermediate_size", "n_inner"),
    "d_vocab": ("vocab_size",),
    "n_ctx": ("max_position_embeddings", "n_positions"),
    "act_fn": ("hidden_activation", "hidden_act", "activation_function"),
}


def _first(config: PretrainedConfig, field: str) -> Any:
    for attr in _ATTRS[field]:
        value = getattr(config, attr, None)
        if value is not None:
            return value
    return None


@dataclass(frozen=True)
class ModelConfig:
    """Architecture summary. Sizes are per layer; ``d_head`` is the per-head width."""

    family: str
    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    d_mlp: int
    d_vocab: int
    n_ctx: int | None
    act_fn: str
    normalization: str  # "RMSNorm" or "LayerNorm"
    positional: str  # "rotary" or "learned"
    parallel_attn_mlp: bool
    gated_mlp: bool
    tied_embeddings: bool
    default_prepend_bos: bool
    attn_out_normed: bool = False  # attn.out is taken after a sandwich post-norm (Gemma 2/3, OLMo 2)
    # Norms on q and k: "per_head" over d_head (Qwen3, Gemma 3), "full" over all heads at once
    # (OLMo 2: the split inputs attn.q_input/k_input of one head then affect the others), or None.
    qk_norm: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def build_config(hf_config: PretrainedConfig, adapter: Adapter, default_prepend_bos: bool) -> ModelConfig:
    d_model = _first(hf_config, "d_model")
    n_heads = _first(hf_config, "n_heads")
    parallel = adapter.parallel
    if isinstance(parallel, str):
        parallel = bool(getattr(hf_config, parallel, False))
    return ModelConfig(
        family=hf_config.model_type,
        n_layers=_first(hf_config, "n_layers"),
        d_model=d_model,
        n_heads=n_heads,
        n_kv_heads=_first(hf_config, "n_kv_heads") or n_heads,
        d_head=_first(hf_config, "d_head") or d_model // n_heads,
        d_mlp=_first(hf_config, "d_mlp") or 4 * d_model,
        d_vocab=_first(hf_config, "d_vocab"),
        n_ctx=_first(hf_config, "n_ctx"),
        act_fn=str(_first(hf_config, "act_fn")),
        normalization="RMSNorm" if adapter.norm.kind == "rms" else "LayerNorm",
        positional=adapter.positional,
        parallel_attn_mlp=parallel,
        gated_mlp=adapter.gated_mlp,
        tied_embeddings=bool(getattr(hf_config, "tie_word_embeddings", False)),
        default_prepend_bos=default_prepend_bos,
        attn_out_normed=adapter.attn_out_norm is not None,
    )
