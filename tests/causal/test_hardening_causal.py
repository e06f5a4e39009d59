"""Issue 11 hardening of the causal methods and the tasks they run on: no NaN or infinite
normalised cell is ranked (silent case 4), and bad facts, prompt pairs and traces are clear
`MechscopeError`s, never raw Python errors or silent reinterpretations."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from conftest import build_tiny

from mechscope.causal.attribution import attribution_patching
from mechscope.causal.patching import activation_patching
from mechscope.causal.path_patching import path_patching
from mechscope.causal.result import PatchingResult
from mechscope.causal.tracing import causal_trace, restored_probs, trace_noise
from mechscope.data.facts import FactPrompt, make_fact
from mechscope.data.tasks import PromptPairs, pairs_from_strings
from mechscope.errors import MechscopeWarning, SelectionError
from mechscope.models.tokens import token_labels


@pytest.fixture(scope="module")
def llama():
    return build_tiny("llama").model


def swapped_pairs(tokens: torch.Tensor) -> PromptPairs:
    """Prompts A, B corrupted to B, A with the same answers: the mean clean and corrupted
    metrics are equal (a sum of the same two numbers), but single cells still move them."""
    clean = tokens[:2]
    return PromptPairs(clean, clean.flip(0), torch.tensor([5, 5]), torch.tensor([7, 7]))


def test_equal_clean_and_corrupted_metrics_warn_and_rank_nothing(llama):
    """Silent case 4: normalising by clean - corrupted = 0 gave +-inf cells ranked first."""
    pairs = swapped_pairs(build_tiny("llama").tokens)
    with pytest.warns(MechscopeWarning, match="are equal"):
        result = activation_patching(llama, pairs, "resid_pre")
    assert float(result.clean_metric.mean()) == float(result.corrupted_metric.mean())
    assert bool((result.raw != result.corrupted_metric[:, None].T).any())  # some cells do move the metric
    assert bool(result.values.isnan().all())
    assert result.top(5).empty
    assert not result.top(5, by="metric").empty  # the raw metric is still ranked
    for method in (attribution_patching, path_patching):
        with pytest.warns(MechscopeWarning):
            assert method(llama, pairs).top(3).empty


def test_non_finite_metrics_warn_and_normal_results_do_not():
    raw = torch.randn(2, 3, 4)
    with pytest.warns(MechscopeWarning, match="not both finite"):
        nan = PatchingResult("resid_pre", "denoise", raw, torch.tensor([1.0, math.nan, 1, 1]), torch.zeros(4), ("pos",))
    assert nan.top(3).empty
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ok = PatchingResult("resid_pre", "denoise", raw, torch.ones(4), torch.zeros(4), ("pos",))
    assert len(ok.top(3)) == 3 and ok.top(3)["normalized"].map(math.isfinite).all()


def test_trace_accepts_list_subject_positions(llama):
    """A list of subject positions traces exactly like a tensor (AttributeError before)."""
    tiny = build_tiny("llama")
    tokens = tiny.tokens[0]
    as_list = FactPrompt("", "", "", tokens.tolist(), [3, 4], 11)
    as_tensor = FactPrompt("", "", "", tokens, torch.tensor([3, 4]), 11)
    got = causal_trace(llama, as_list, ["resid"], n_samples=2)
    want = causal_trace(llama, as_tensor, ["resid"], n_samples=2)
    assert torch.equal(got.scores["resid"], want.scores["resid"]) and got.subject_positions == [3, 4]
    assigned = FactPrompt("", "", "", tokens, torch.tensor([3, 4]), 11)
    assigned.subject_positions = [3, 4]  # assigned after construction
    assert torch.equal(causal_trace(llama, assigned, ["resid"], n_samples=2).scores["resid"], want.scores["resid"])


@pytest.mark.parametrize("positions", [[3.0, 4.0], [True, False], [[3, 4]]])
def test_bad_subject_positions_are_clear_errors(positions):
    with pytest.raises(SelectionError, match="subject_positions"):
        FactPrompt("", "", "", torch.arange(8), positions, 11)


def test_bad_trace_inputs_are_clear_errors(llama):
    fact = FactPrompt("", "", "", torch.arange(3, 11), [3, 4], 11)
    with pytest.raises(SelectionError, match="FactPrompt"):
        causal_trace(llama, (torch.arange(8), [3]))
    with pytest.raises(SelectionError, match="noise must be"):
        restored_probs(llama, fact, [{}], [[0.0]])
    noise = trace_noise(llama, fact, n_samples=2)
    with pytest.raises(SelectionError, match="noise must be"):
        restored_probs(llama, fact, [{}], noise.long())


@pytest.mark.parametrize("attribute", ["", "   ", "\n"])
def test_make_fact_rejects_an_empty_attribute(smol, attribute):
    """An empty attribute became the space token before."""
    with pytest.raises(SelectionError, match="attribute"):
        make_fact(smol, "The capital of France is", "France", attribute)


def test_make_fact_rejects_a_blank_subject(smol):
    with pytest.raises(SelectionError, match="subject"):
        make_fact(smol, "The capital of France is", " ", "Paris")


@pytest.mark.parametrize("prompt", ["", "   "])
def test_pairs_from_strings_rejects_an_empty_prompt(smol, prompt):
    """An empty prompt gave PromptPairs of shape [1, 0] (answer position -1)."""
    with pytest.raises(SelectionError, match="non-empty"):
        pairs_from_strings(smol, [prompt], [prompt], [" Paris"], [" London"])


def test_pairs_from_strings_rejects_a_lone_string(smol):
    """A string where a list is expected would be read character by character."""
    with pytest.raises(SelectionError, match="list of strings"):
        pairs_from_strings(smol, "The capital of France is", "The capital of Spain is", " Paris", " Madrid")


def test_prompt_pairs_reject_bad_answers_and_positions():
    tokens = torch.arange(12).reshape(2, 6)
    answers = torch.tensor([1, 2])
    with pytest.raises(SelectionError, match="non-empty prompts"):
        PromptPairs(tokens[:, :0], tokens[:, :0], answers, answers)
    with pytest.raises(SelectionError, match="integer"):
        PromptPairs(tokens.float(), tokens.float(), answers, answers)
    with pytest.raises(SelectionError, match="integer"):
        PromptPairs(tokens, tokens, torch.tensor([1.5, 2.0]), answers)
    with pytest.raises(SelectionError, match=">= 0"):
        PromptPairs(tokens, tokens, torch.tensor([-1, 2]), answers)
    with pytest.raises(SelectionError, match="answer_positions"):
        PromptPairs(tokens, tokens, answers, answers, answer_positions=torch.tensor([6, 1]))
    with pytest.raises(SelectionError, match="answer_positions"):
        PromptPairs(tokens, tokens, answers, answers, answer_positions=torch.tensor([1]))
    pairs = PromptPairs(tokens, tokens, [1, 2], [3, 4], answer_positions=[-1, -2])
    assert pairs.answer_positions.tolist() == [5, 4] and pairs.answers.dtype == torch.long


def test_patching_rejects_answers_outside_the_vocabulary(llama):
    tokens = build_tiny("llama").tokens
    pairs = PromptPairs(tokens, tokens.flip(0), torch.tensor([5, 97, 5]), torch.tensor([7, 7, 7]))
    for method in (activation_patching, path_patching):
        with pytest.raises(SelectionError, match="outside the model's vocabulary"):
            method(llama, pairs)
    with pytest.raises(SelectionError, match="PromptPairs"):
        activation_patching(llama, (tokens, tokens))


def test_trace_tables_and_plots_show_token_labels(smol):
    """Token display: the trace keeps the decoded text, its table and plot show labels."""
    fact = make_fact(smol, "The capital of France is", "France", "Paris")
    trace = causal_trace(smol, fact, ["resid"], n_samples=1, window=1)
    labels = token_labels(smol.tokenizer, fact.tokens.tolist())
    assert trace.str_tokens[3] == " France"
    frame = trace.to_dataframe()
    assert frame[frame["layer"] == 0]["token"].tolist() == labels
    assert trace.token_labels()[3] == "3 ·France *"
    assert list(trace.plot().data[0].y) == trace.token_labels()


@pytest.mark.parametrize("positions", [[1.5], [True]])
def test_path_patching_rejects_float_and_bool_receiver_positions(llama, positions):
    """Case 1 for path patching: a float or bool position was read as an int."""
    pairs = PromptPairs(build_tiny("llama").tokens, build_tiny("llama").tokens.flip(0), torch.tensor([5, 5, 5]),
                        torch.tensor([7, 7, 7]))
    with pytest.raises(SelectionError, match="must be ints"):
        path_patching(llama, pairs, [(1, 0)], receiver_positions=positions)
