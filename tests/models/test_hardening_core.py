"""Issue 11 (hardening) in the core: selections, hook keys, token ids, empty inputs, cache
look-ups, TransformerLens habits and token display. Each test names the issue case it covers."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import transformers as tf
from conftest import build_tiny

import mechscope as ms
from mechscope.errors import (
    ArgumentTypeError,
    ContextLengthWarning,
    MetricError,
    TokenIdError,
    UnknownCachedActivationError,
    UnsupportedArgumentError,
)
from mechscope.models.selection import index_for, last_real_positions
from mechscope.models.tokens import token_labels, token_texts, visible
from mechscope.result import position_labels

PROMPT = "When Mary and John went to the store, John gave a drink to"
NAME = "blocks.3.resid_post"


@pytest.fixture(scope="module")
def tiny_llama():
    built = build_tiny("llama")
    yield built
    built.model.reset_hooks()


@pytest.fixture
def llama(tiny_llama) -> ms.HookedModel:
    return tiny_llama.model


@pytest.fixture
def tokens(tiny_llama) -> torch.Tensor:
    return tiny_llama.tokens  # [3, 12]


@pytest.fixture(scope="module")
def ids(smol) -> torch.Tensor:
    return smol.to_tokens(PROMPT)  # [1, 14]


def _recorded(model, tokens, name, hooks=None, **kwargs) -> torch.Tensor:
    with model.hooks(hooks or {}):
        _, cache = model.run_with_cache(tokens, name, **kwargs)
    return cache[name]


# ---------------------------------------------------------------- silent case 1: masks, bools, floats
def test_case1_bool_mask_target_touches_exactly_the_masked_positions(smol, ids):
    """Silent case 1: a bool mask with only the last position True zeroes that position only
    (it used to be read as indices 0/1 and zero positions 0 and 1)."""
    mask = torch.zeros(ids.shape[1], dtype=torch.bool)
    mask[-1] = True
    clean = _recorded(smol, ids, NAME)
    edited = _recorded(smol, ids, NAME, {ms.at(NAME, positions=mask): lambda x, ctx: torch.zeros_like(x)})
    assert torch.equal(edited[:, :-1], clean[:, :-1])
    assert bool((edited[:, -1] == 0).all()) and bool((clean[:, -1] != 0).any())


def test_case1_bool_mask_in_run_with_cache_keeps_the_masked_positions(smol, ids):
    """Silent case 1: run_with_cache(positions=mask) returned all 14 positions."""
    full = _recorded(smol, ids, NAME)
    picked = [2, 5, 13]
    mask = torch.zeros(ids.shape[1], dtype=torch.bool)
    mask[picked] = True
    for given in (mask, mask.tolist(), mask.numpy()):
        got = _recorded(smol, ids, NAME, positions=given)
        assert got.shape == (1, 3, smol.cfg.d_model)
        assert torch.equal(got, full[:, picked])


def test_case1_per_prompt_mask_equals_per_prompt_indices(llama, tokens):
    """Silent case 1, per prompt: a [batch, pos] mask is PerPrompt of each row's True positions."""
    rows = [[0, 4], [3, 11], [5, 6]]
    mask = torch.zeros(tokens.shape, dtype=torch.bool)
    for b, row in enumerate(rows):
        mask[b, row] = True
    by_index = _recorded(llama, tokens, "blocks.1.resid_post", positions=ms.PerPrompt(rows))
    for given in (mask, ms.PerPrompt(mask)):
        assert torch.equal(_recorded(llama, tokens, "blocks.1.resid_post", positions=given), by_index)
    mask[0, 7] = True
    with pytest.raises(ms.SelectionError, match=r"same number of positions.*\[3, 2, 2\]"):
        llama.run_with_cache(tokens, "blocks.1.resid_post", positions=mask)
    with pytest.raises(ms.SelectionError, match=r"\[batch, pos\] = \[3, 12\]"):
        llama.run_with_cache(tokens, "blocks.1.resid_post", positions=mask[:, :5])


def test_case1_head_mask_equals_head_indices(llama, tokens):
    """Silent case 1 for heads: a bool mask over heads selects those heads."""
    heads = torch.tensor([False, True, False, True])

    def zero(x, ctx):
        return torch.zeros_like(x)

    by_mask = _recorded(llama, tokens, "blocks.0.attn.z", {ms.at("blocks.0.attn.z", heads=heads): zero})
    by_index = _recorded(llama, tokens, "blocks.0.attn.z", {ms.at("blocks.0.attn.z", heads=[1, 3]): zero})
    assert torch.equal(by_mask, by_index)
    assert bool((by_mask[:, :, [1, 3]] == 0).all()) and bool((by_mask[:, :, [0, 2]] != 0).any())
    with (pytest.raises(ms.SelectionError, match="one entry per element of the axis"),
          llama.hooks({ms.at("blocks.0.attn.z", heads=heads[:3]): zero}), torch.no_grad()):
        llama(tokens)


@pytest.mark.parametrize("bad", [True, False, 3.5, np.float64(2.0), torch.tensor(2.7), torch.tensor([1.0, 2.0]),
                                 [1.0, 2.0], [True, 1], "first", {1, 2}])
def test_case1_bools_floats_and_strings_are_rejected(llama, tokens, bad):
    """Silent case 1: positions=3.5 acted as 3, heads=2.7 as 2, positions=True as 1."""
    with pytest.raises(ms.SelectionError):
        ms.at("blocks.0.attn.z", positions=bad)
    with pytest.raises(ms.SelectionError):
        ms.at("blocks.0.attn.z", heads=bad)
    with pytest.raises(ms.SelectionError):
        llama.run_with_cache(tokens, "blocks.0.resid_post", positions=bad)
    with pytest.raises(ms.SelectionError):
        ms.PerPrompt(bad if not isinstance(bad, (bool, float, np.floating, str)) else [bad] * 3)


def test_case1_integer_selections_are_unchanged(llama, tokens):
    """The accepted kinds still select what they did (numpy ints too)."""
    full = _recorded(llama, tokens, "blocks.0.resid_post")
    assert torch.equal(_recorded(llama, tokens, "blocks.0.resid_post", positions=np.int64(3)), full[:, 3])
    assert torch.equal(_recorded(llama, tokens, "blocks.0.resid_post", positions=[1, -1]), full[:, [1, 11]])
    assert torch.equal(_recorded(llama, tokens, "blocks.0.resid_post", positions=slice(2, 5)), full[:, 2:5])
    assert torch.equal(_recorded(llama, tokens, "blocks.0.resid_post", positions=torch.tensor(4)), full[:, 4])


# ---------------------------------------------------------------- positions="last"
def test_last_is_each_prompts_last_real_token_under_padding(smol):
    """positions="last" (a raw torch TypeError before): on a right- or left-padded batch it is
    each prompt's last real token, the value each prompt gives when run alone at -1."""
    texts = [PROMPT, "The Eiffel Tower is in"]
    alone = torch.cat([_recorded(smol, text, NAME, positions=-1) for text in texts])
    for side in ("right", "left"):
        got = _recorded(smol, texts, NAME, positions="last", padding_side=side)
        torch.testing.assert_close(got, alone, atol=1e-4, rtol=1e-4)


def test_last_in_a_target_edits_only_the_last_real_tokens(smol):
    """A hook at positions="last" on a right-padded batch changes each prompt's last real token."""
    texts = [PROMPT, "The Eiffel Tower is in"]
    tokens, mask = smol.to_tokens(texts, return_mask=True)
    clean = _recorded(smol, tokens, NAME, attention_mask=mask)
    edited = _recorded(smol, tokens, NAME, {ms.at(NAME, positions="last"): lambda x, ctx: x * 0},
                       attention_mask=mask)
    last = last_real_positions(mask, *mask.shape)
    changed = (edited != clean).any(-1)  # [batch, pos]
    expected = torch.zeros_like(changed)
    expected[torch.arange(2), last] = True
    assert last.tolist()[1] < tokens.shape[1] - 1  # the short prompt is padded
    assert torch.equal(changed, expected)


def test_last_gradients_follow_the_mask(smol):
    """grad_metric with positions="last": the backward recorders resolve "last" like the forward."""
    texts = [PROMPT, "The Eiffel Tower is in"]
    _, cache = smol.run_with_cache(texts, NAME, positions="last", grad_metric=lambda logits: logits[..., 5].sum())
    _, full = smol.run_with_cache(texts, NAME, grad_metric=lambda logits: logits[..., 5].sum())
    _, mask = smol.to_tokens(texts, return_mask=True)
    last = last_real_positions(mask, *mask.shape)
    assert torch.equal(cache.grads[NAME], full.grads[NAME][torch.arange(2), last])


def test_last_outside_a_forward_is_a_clear_error():
    with pytest.raises(ms.SelectionError, match="no HookedModel forward is running"):
        index_for(torch.Size([2, 5, 8]), 1, None, None, "last", torch.device("cpu"))


# ---------------------------------------------------------------- silent case 3: exact names
def test_case3_none_hook_key_is_rejected_not_all_names(llama):
    """Silent case 3: a hook dict key None hooked all 483 names."""
    calls = []
    for spec in ({None: lambda x, ctx: calls.append(ctx.name)}, [(None, lambda x, ctx: None)],
                 {3: lambda x, ctx: None}):
        with pytest.raises(ArgumentTypeError, match="hook key must be an activation name"), llama.hooks(spec):
            pass
    with pytest.raises(TypeError):  # still a TypeError for existing `except TypeError` code
        ms.at(None)
    with pytest.raises(ArgumentTypeError, match="non-empty str"):
        ms.at("")
    assert calls == [] and not llama._runtime.entries


def test_case3_hook_point_takes_exact_names(smol):
    """Silent case 3: hook_point("blocks.*.resid_post") returned block 0."""
    with pytest.raises(ms.SelectionError, match=r"hook_points\(pattern\)"):
        smol.hook_point("blocks.*.resid_post")
    with pytest.raises(ms.UnknownActivationError, match="blocks.3.resid_post"):
        smol.hook_point("blocks.3.resid_psot")
    with pytest.raises(ArgumentTypeError):
        smol.hook_point(3)
    assert smol.hook_point(NAME).layer == 3


@pytest.mark.parametrize("spec", [3, 2.5, ["blocks.1.resid_post", 3], b"blocks", object()])
def test_case3_names_of_other_types_are_rejected(llama, tokens, spec):
    with pytest.raises(ArgumentTypeError, match="activation names must be"):
        llama.run_with_cache(tokens, spec)


def test_case3_empty_name_matches_nothing(llama, tokens):
    with pytest.raises(ms.UnknownActivationError, match="''"):
        llama.run_with_cache(tokens, "")


# ---------------------------------------------------------------- silent case 5: ids and context
def test_case5_out_of_vocabulary_and_negative_ids(smol):
    """Silent case 5: ids outside [0, d_vocab) gave a raw IndexError; to_string([49152]) returned ''."""
    for bad in ([[1, 49152, 7]], [[5, -1]]):
        with pytest.raises(TokenIdError, match="49152 ids") as err:
            smol(torch.tensor(bad))
        assert str(bad[0][1]) in str(err.value)
        assert isinstance(err.value, IndexError)
    with pytest.raises(TokenIdError, match="49152"):
        smol.to_string([49152])
    with pytest.raises(TokenIdError):
        smol.to_str_tokens(torch.tensor([3, -2]))
    with pytest.raises(ArgumentTypeError, match="integer"):
        smol(torch.tensor([[1.0, 2.0]]))
    assert smol.to_string([]) == ""


def _short_context_model(n_ctx: int) -> ms.HookedModel:
    config = tf.LlamaConfig(num_hidden_layers=1, hidden_size=32, num_attention_heads=2, num_key_value_heads=2,
                            intermediate_size=48, vocab_size=50, max_position_embeddings=n_ctx)
    torch.manual_seed(0)
    return ms.HookedModel(tf.LlamaForCausalLM(config).eval())


def test_case5_inputs_past_the_context_warn(smol):
    """Silent case 5: 8,300 tokens on an 8,192 context ran with no warning."""
    assert smol.cfg.n_ctx == 8192  # the bundled model's context, checked by the same rule
    model = _short_context_model(8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model(torch.arange(8)[None])  # at the limit: silent
    with pytest.warns(ContextLengthWarning, match="10 tokens, more than the model's context length of 8"):
        model(torch.arange(10)[None])
    with warnings.catch_warnings():
        warnings.simplefilter("error", ContextLengthWarning)  # the documented way to make it an error
        with pytest.raises(ContextLengthWarning):
            model.run_with_cache(torch.arange(10)[None], "blocks.0.resid_post")


def test_case5_learned_positions_end_at_the_context():
    """A model with learned position embeddings cannot run past them (a raw IndexError before)."""
    config = tf.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50, n_positions=8)
    model = ms.HookedModel(tf.GPT2LMHeadModel(config).eval())
    assert model(torch.arange(8)[None]).shape == (1, 8, 50)
    with pytest.raises(ms.SelectionError, match="learned position embeddings for 8 positions"):
        model(torch.arange(9)[None])


# ---------------------------------------------------------------- empty inputs
@pytest.mark.parametrize("empty", ["", [""], torch.zeros(1, 0, dtype=torch.long), torch.zeros(0, 3, dtype=torch.long),
                                   torch.zeros(0, dtype=torch.long)])
def test_empty_inputs_are_a_selection_error(smol, empty):
    """Empty inputs crashed inside transformers."""
    for call in (lambda: smol(empty), lambda: smol.run_with_cache(empty, NAME),
                 lambda: smol.generate(empty, max_new_tokens=2)):
        with pytest.raises(ms.SelectionError, match="no tokens"):
            call()


def test_an_empty_prompt_in_a_batch_is_named(smol):
    with pytest.raises(ms.SelectionError, match=r"prompt\(s\) \[1\] have no tokens"):
        smol([PROMPT, ""])


# ---------------------------------------------------------------- names=... and cache look-ups
def test_names_given_a_target_says_what_to_write(smol, ids):
    with pytest.raises(ArgumentTypeError, match=r"names='blocks.3.resid_post', positions=-1"):
        smol.run_with_cache(ids, ms.at(NAME, positions=-1))


def test_cache_lookup_errors_talk_about_the_cache(smol, ids):
    """cache["misspelt"] said "all 1 names of this model" (it counted the cache)."""
    _, cache = smol.run_with_cache(ids, [NAME, "blocks.4.resid_post"])
    with pytest.raises(UnknownCachedActivationError) as err:
        cache["blocks.3.resid_psot"]
    message = str(err.value)
    assert "not in this cache" in message and "Closest cached names: blocks.3.resid_post" in message
    assert "holds 2 names" in message and "of this model" not in message
    with pytest.raises(UnknownCachedActivationError, match="activation of the model but was not cached"):
        cache["blocks.5.resid_post"]
    assert "blocks.5.resid_post" not in cache and cache.get("blocks.5.resid_post") is None
    assert isinstance(err.value, ms.UnknownActivationError) and isinstance(err.value, KeyError)
    with pytest.raises(UnknownCachedActivationError, match="not in this cache"):
        cache.stack("blocks.*.mlp.out")


# ---------------------------------------------------------------- TransformerLens habits
def test_tl_names_filter_is_names(smol, ids):
    for spec in (NAME, [NAME, "blocks.0.mlp.out"], lambda name: name.endswith("ln_final.out")):
        _, by_names = smol.run_with_cache(ids, spec)
        _, by_filter = smol.run_with_cache(ids, names_filter=spec)
        assert list(by_filter) == list(by_names) and len(by_names) > 0
        assert all(torch.equal(by_filter[n], by_names[n]) for n in by_names)
    with pytest.raises(ms.SelectionError, match="not both"):
        smol.run_with_cache(ids, NAME, names_filter=NAME)


def test_tl_fwd_and_bwd_hooks_are_forward_and_backward(smol, ids):
    def halve(x, hook):
        assert hook.name == NAME and hook.layer == 3  # ctx.layer is an attribute, not hook.layer()
        return x * 0.5

    reference = smol.run_with_hooks(ids, {NAME: halve})
    assert torch.equal(smol.run_with_hooks(ids, fwd_hooks=[(NAME, halve)]), reference)
    assert torch.equal(smol.run_with_hooks(ids, fwd_hooks=[(lambda n: n == NAME, halve)]), reference)
    assert not torch.equal(reference, smol(ids))
    grads = []
    with torch.enable_grad():
        smol.run_with_hooks(ids, bwd_hooks=[(NAME, lambda g, hook: grads.append(g))])[0, -1, 5].backward()
    assert len(grads) == 1 and grads[0].shape == (1, 14, smol.cfg.d_model)
    with pytest.raises(UnsupportedArgumentError, match="always removes"):
        smol.run_with_hooks(ids, fwd_hooks=[(NAME, halve)], reset_hooks_end=False)
    with pytest.raises(ms.SelectionError, match="matches no hook point"):
        smol.run_with_hooks(ids, fwd_hooks=[(lambda n: n == "nothing", halve)])


def test_tl_return_type(smol):
    """return_type="loss" is the mean next-token cross-entropy over real tokens; None returns None."""
    texts = [PROMPT, "The Eiffel Tower is in"]
    logits = smol(PROMPT)
    tokens = smol.to_tokens(PROMPT)
    expected = F.cross_entropy(logits[0, :-1].float(), tokens[0, 1:])
    torch.testing.assert_close(smol(PROMPT, return_type="loss"), expected)
    batch_loss = smol(texts, return_type="loss", padding_side="left")
    per_prompt = [smol(t, return_type="loss") for t in texts]
    n = [len(smol.to_tokens(t)[0]) - 1 for t in texts]
    torch.testing.assert_close(batch_loss, (per_prompt[0] * n[0] + per_prompt[1] * n[1]) / sum(n),
                               atol=1e-4, rtol=1e-4)
    assert smol(PROMPT, return_type=None) is None
    assert torch.equal(smol(PROMPT, return_type="logits"), logits)
    with pytest.raises(ms.SelectionError, match="return_type must be one of"):
        smol(PROMPT, return_type="both")


def test_tl_remove_batch_dim(smol, ids):
    _, cache = smol.run_with_cache(ids, NAME, remove_batch_dim=True)
    _, full = smol.run_with_cache(ids, NAME)
    assert torch.equal(cache[NAME], full[NAME][0])
    with pytest.raises(ms.SelectionError, match="one prompt"):
        smol.run_with_cache([PROMPT, PROMPT], NAME, remove_batch_dim=True)


@pytest.mark.parametrize("kwarg, hint", [("incl_bwd", "grad_metric"), ("stop_at_layer", "stop_early"),
                                         ("start_at_layer", "run_from"), ("bogus", "from-transformerlens")])
def test_tl_arguments_without_an_alias_name_the_equivalent(smol, ids, kwarg, hint):
    """TL keywords failed with "TypeError ... HookedModel.forward()"."""
    for call in (lambda: smol(ids, **{kwarg: True}), lambda: smol.run_with_cache(ids, NAME, **{kwarg: True}),
                 lambda: smol.run_with_hooks(ids, {}, **{kwarg: True})):
        with pytest.raises(UnsupportedArgumentError, match=hint) as err:
            call()
        assert isinstance(err.value, TypeError)


def test_grad_metric_contract(smol, ids):
    for metric, match in ((lambda logits: 1.5, "must return a scalar tensor"), (lambda logits: logits[0, -1, :3], r"shape \(3,\)"),
                          (lambda logits: torch.tensor(1.0), "does not depend on the logits")):
        with pytest.raises(MetricError, match=match):
            smol.run_with_cache(ids, NAME, grad_metric=metric)


# ---------------------------------------------------------------- token display
def test_partial_utf8_tokens_show_their_bytes(smol):
    """Byte-level BPE splits " ü" into two tokens that each decode to U+FFFD on their own."""
    tok = smol.tokenizer
    ids = smol.to_tokens(" ünï")[0].tolist()
    partial = [i for i in ids if "\ufffd" in tok.decode([i])]
    assert len(partial) == 2  # the tokenizer really splits the character
    texts = smol.to_str_tokens(" ünï")
    assert texts[:2] == [" \\xc3", "\\xbc"] and bytes([0xC3, 0xBC]).decode() == "ü"
    assert not any("\ufffd" in t for t in texts)
    assert "".join(texts[2:]) == "nï"
    whole = smol.to_str_tokens(PROMPT)
    assert whole == tok.batch_decode([[i] for i in smol.to_tokens(PROMPT)[0].tolist()])  # plain tokens unchanged


def test_every_fffd_token_of_the_vocab_gets_bytes(smol):
    tok = smol.tokenizer
    broken = [i for i, text in enumerate(tok.batch_decode([[i] for i in range(len(tok))])) if "\ufffd" in text]
    assert len(broken) > 100
    texts = dict(zip(broken, token_texts(tok, broken)))
    real_fffd = tok("\ufffd", add_special_tokens=False)["input_ids"]  # the character U+FFFD itself
    assert [i for i, t in texts.items() if "\ufffd" in t] == real_fffd
    assert all("\\x" in t for i, t in texts.items() if i not in real_fffd)


def test_token_labels_make_whitespace_visible(smol):
    assert visible(" Mary\n\tx\r\x00") == "\u00b7Mary\u21b5\u21e5x\u240d\\x00"
    ids = smol.to_tokens(" Mary went\n")[0].tolist()
    labels = token_labels(smol.tokenizer, ids)
    assert labels[0] == "\u00b7Mary" and labels[-1].endswith("\u21b5")
    assert all(" " not in label for label in labels)


def test_position_labels_stay_unique_where_a_token_repeats(smol):
    """Token display: a category axis merges equal labels, so " John" twice needs its position."""
    ids = smol.to_tokens(PROMPT)[0].tolist()
    labels = token_labels(smol.tokenizer, ids)
    assert labels.count("\u00b7John") == 2
    axis = position_labels(labels)
    assert len(set(axis)) == len(axis) and axis[2] == "2 \u00b7and"


def test_wrapping_a_wrapped_model_again_is_refused():
    """A second HookedModel on the same HF model took over its attention routing: the first
    wrapper's attn.pattern hooks silently stopped firing (found by the loading tests)."""
    import copy
    import gc

    import transformers as tf

    config = tf.LlamaConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
                            intermediate_size=48, vocab_size=50)
    hf = tf.LlamaForCausalLM(config).eval()
    first = ms.HookedModel(hf)
    with pytest.raises(ms.errors.AlreadyWrappedError, match="already wrapped"):
        ms.HookedModel(hf)
    twin = ms.HookedModel(copy.deepcopy(hf))  # a copy is independent
    tokens = torch.randint(0, 50, (1, 6))
    for model in (first, twin):
        _, cache = model.run_with_cache(tokens, "blocks.*.attn.pattern")
        assert len(cache) == 2
    del first, model
    gc.collect()
    ms.HookedModel(hf)  # once the first wrapper is gone, wrapping again is fine
