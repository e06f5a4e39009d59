"""Tiny random-initialised models of every supported family, and the bundled model.

Weights are re-drawn with larger variance than HF's init so activations are far from
zero and parity tolerances mean something. Each family is built twice from the same
weights: one copy is wrapped by mechscope, the other stays a plain HF model for reference.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported: it reads this once

import copy  # noqa: E402
from dataclasses import dataclass  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
import transformers as tf  # noqa: E402

import mechscope as ms  # noqa: E402

COMMON = dict(vocab_size=97, max_position_embeddings=64)
LLAMA_LIKE = dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=96, **COMMON)

# family id -> (config class, model class, config kwargs)
FAMILIES = {
    "gpt2": (tf.GPT2Config, tf.GPT2LMHeadModel, dict(n_layer=2, n_embd=64, n_head=4, vocab_size=97, n_positions=64)),
    "gpt_neox": (tf.GPTNeoXConfig, tf.GPTNeoXForCausalLM,
                 dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, intermediate_size=96, **COMMON)),
    "gpt_neox_sequential": (tf.GPTNeoXConfig, tf.GPTNeoXForCausalLM,
                            dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, intermediate_size=96,
                                 use_parallel_residual=False, **COMMON)),
    "gptj": (tf.GPTJConfig, tf.GPTJForCausalLM,
             dict(n_layer=2, n_embd=64, n_head=4, vocab_size=97, n_positions=64, rotary_dim=8)),
    "llama": (tf.LlamaConfig, tf.LlamaForCausalLM, LLAMA_LIKE),
    "mistral": (tf.MistralConfig, tf.MistralForCausalLM, dict(LLAMA_LIKE, sliding_window=5)),
    "qwen2": (tf.Qwen2Config, tf.Qwen2ForCausalLM, LLAMA_LIKE),
    "qwen3": (tf.Qwen3Config, tf.Qwen3ForCausalLM, dict(LLAMA_LIKE, head_dim=16)),
    "gemma2": (tf.Gemma2Config, tf.Gemma2ForCausalLM,
               dict(LLAMA_LIKE, head_dim=16, query_pre_attn_scalar=16, sliding_window=5)),
    "gemma3": (tf.Gemma3TextConfig, tf.Gemma3ForCausalLM,
               dict(LLAMA_LIKE, head_dim=16, query_pre_attn_scalar=16, sliding_window=5)),
    "olmo2": (tf.Olmo2Config, tf.Olmo2ForCausalLM, LLAMA_LIKE),
    "phi3": (tf.Phi3Config, tf.Phi3ForCausalLM, dict(LLAMA_LIKE, pad_token_id=0, bos_token_id=1, eos_token_id=2)),
}
FAMILY_IDS = list(FAMILIES)


@dataclass
class Tiny:
    family: str
    model: ms.HookedModel
    reference: tf.PreTrainedModel  # plain HF copy with the same attention implementation
    eager: tf.PreTrainedModel  # plain HF copy using eager attention
    tokens: torch.Tensor  # [3, 12]


def _randomize(model: torch.nn.Module, norm_offset: float, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=gen)
            if param.ndim == 1 and ("norm" in name or "ln" in name):
                param.copy_(1.0 - norm_offset + 0.2 * noise)
            elif param.ndim == 1:
                param.copy_(0.1 * noise)
            else:
                param.copy_(noise * 0.35 / param.shape[-1] ** 0.5 * 4)


def build_tiny(family: str, seed: int = 0) -> Tiny:
    config_cls, model_cls, kwargs = FAMILIES[family]
    torch.manual_seed(seed)
    config = config_cls(**kwargs)
    hf = model_cls(config).eval()
    adapter = ms.adapters.get_adapter(config.model_type)
    _randomize(hf, adapter.norm.weight_offset, seed)
    reference = copy.deepcopy(hf)
    eager = copy.deepcopy(hf)
    if hf.config._attn_implementation != "eager":
        eager.set_attn_implementation("eager")
    tokens = torch.randint(3, config.vocab_size, (3, 12), generator=torch.Generator().manual_seed(seed + 1))
    return Tiny(family, ms.HookedModel(hf), reference, eager, tokens)


_TINY_CACHE: dict[str, Tiny] = {}


@pytest.fixture(params=FAMILY_IDS)
def tiny(request) -> Tiny:
    if request.param not in _TINY_CACHE:
        _TINY_CACHE[request.param] = build_tiny(request.param)
    built = _TINY_CACHE[request.param]
    built.model.reset_hooks()
    return built


@pytest.fixture(scope="session")
def smol() -> ms.HookedModel:
    return ms.load("smollm2-135m")


@pytest.fixture(scope="session")
def saved_model(tmp_path_factory, smol):
    """``(folder, corpus)``: a small random Llama saved with the bundled tokenizer, and a local
    text corpus (three standard-library modules), for the command-line tests."""
    import sysconfig
    from pathlib import Path

    folder = tmp_path_factory.mktemp("model")
    config = tf.LlamaConfig(vocab_size=len(smol.tokenizer), hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    torch.manual_seed(0)
    tf.LlamaForCausalLM(config).save_pretrained(folder)
    smol.tokenizer.save_pretrained(folder)
    corpus = folder / "corpus.txt"
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    corpus.write_text("\n".join((stdlib / name).read_text() for name in ("textwrap.py", "shlex.py", "glob.py")))
    return folder, corpus
