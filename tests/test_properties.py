"""Property-based checks of the public API (Hypothesis): generated inputs, good and bad, give
either the right answer (checked against an independent reference: plain tensor indexing, the
plain HF model, a prompt run alone) or a `MechscopeError` subclass. Never another exception,
never a silent reinterpretation (a float read as an int, a mask read as indices, a pad token
read as the last one).

Each property runs a bounded number of examples on a tiny random Llama (GQA) and on GPT-2
(absolute positions, LayerNorm), so the whole file takes well under a minute.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from conftest import build_tiny
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mechscope as ms
from mechscope.causal.metrics import checked_metric_value
from mechscope.data.tasks import PromptPairs
from mechscope.errors import MechscopeError

PROFILE = settings(max_examples=60, deadline=None, derandomize=True,
                   suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
BATCH, POS, VOCAB = 3, 12, 97
NAME = "blocks.1.resid_post"


class _Built:
    """A tiny model with a one-word repr (Hypothesis prints every argument of a failing case)."""

    def __init__(self, family: str):
        tiny = build_tiny(family)
        self.family, self.model, self.reference, self.tokens = family, tiny.model, tiny.reference, tiny.tokens

    def __repr__(self) -> str:
        return f"tiny {self.family}"


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def built(request):
    return _Built(request.param)


def _call(fn):
    """``("ok", value)`` or ``("error", exception)`` for a MechscopeError; anything else fails the test."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return "ok", fn()
    except MechscopeError as error:
        assert str(error), "a MechscopeError must carry a message"
        return "error", error


# ---------------------------------------------------------------- selections
_ints = st.integers(-2 * POS, 2 * POS)
positions_strategy = st.one_of(
    st.none(), _ints, st.booleans(), st.floats(-20, 20), st.just(float("nan")), st.text(max_size=4),
    st.lists(_ints, max_size=5), st.lists(st.floats(-5, 5), min_size=1, max_size=3),
    st.lists(st.booleans(), min_size=POS, max_size=POS),  # a mask over positions
    st.lists(st.booleans(), min_size=1, max_size=POS - 1),  # a mask of the wrong length
    st.builds(slice, st.one_of(st.none(), _ints), st.one_of(st.none(), _ints)),
    st.lists(st.lists(_ints, min_size=1, max_size=2), min_size=1, max_size=4),  # nested
    st.lists(_ints, min_size=BATCH, max_size=BATCH).map(ms.PerPrompt),
    st.lists(_ints, min_size=1, max_size=5).map(lambda v: torch.tensor(v)),
    st.lists(st.booleans(), min_size=POS, max_size=POS).map(lambda v: torch.tensor(v)),
    st.floats(-3, 3).map(torch.tensor),
)


def _expected_positions(positions, full: torch.Tensor):
    """What a selection must read from ``full`` `[batch, pos, d]`, or None where it must be an error.

    An independent definition: plain Python/torch indexing of the whole activation.
    """
    if positions is None:
        return full
    if isinstance(positions, (bool, float, str)):
        return None
    if isinstance(positions, int):
        return full[:, positions] if -POS <= positions < POS else None
    if isinstance(positions, slice):
        return full[:, positions]
    if isinstance(positions, ms.PerPrompt):
        idx = positions.positions
        if not bool(((idx >= -POS) & (idx < POS)).all()):
            return None
        return full[torch.arange(BATCH), idx % POS]
    values = positions.tolist() if isinstance(positions, torch.Tensor) else positions
    if isinstance(positions, torch.Tensor) and positions.ndim == 0:
        return None  # a float scalar tensor (ints are drawn as lists)
    if not values:
        return full[:, []]
    if all(isinstance(v, bool) for v in values):
        return full[:, torch.tensor(values)] if len(values) == POS else None
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return full[:, values] if all(-POS <= v < POS for v in values) else None
    return None  # floats, nested lists


@PROFILE
@given(positions=positions_strategy)
def test_positions_read_exactly_what_they_select_or_error(built, positions):
    model = built.model
    _, full = model.run_with_cache(built.tokens, NAME)
    expected = _expected_positions(positions, full[NAME])
    kind, got = _call(lambda: model.run_with_cache(built.tokens, NAME, positions=positions)[1][NAME])
    if expected is None:
        assert kind == "error", f"positions={positions!r} was accepted and read shape {tuple(got.shape)}"
    elif kind == "ok":
        assert torch.equal(got, expected), f"positions={positions!r} read the wrong cells"
    else:  # a valid selection refused: only an empty one may be
        assert expected.numel() == 0, f"positions={positions!r} refused: {got}"


heads_strategy = st.one_of(
    st.none(), st.integers(-8, 8), st.booleans(), st.floats(-4, 4), st.lists(st.integers(-8, 8), max_size=4),
    st.lists(st.booleans(), min_size=4, max_size=4), st.lists(st.booleans(), min_size=1, max_size=3),
)


@PROFILE
@given(heads=heads_strategy, positions=st.one_of(st.none(), st.integers(-POS, POS - 1)))
def test_a_zeroing_hook_zeroes_exactly_its_cells_or_errors(built, heads, positions):
    """``ms.at(z, heads, positions)``: the cells it zeroes are the ones plain indexing selects."""
    model = built.model
    n_heads = model.cfg.n_heads
    name = "blocks.0.attn.z"
    _, clean = model.run_with_cache(built.tokens, name)
    z = clean[name]  # [batch, pos, heads, d_head]

    def zero(x, ctx):
        return torch.zeros_like(x)

    def run():
        with model.hooks({ms.at(name, heads=heads, positions=positions): zero}):
            return model.run_with_cache(built.tokens, name)[1][name]

    kind, got = _call(run)
    if isinstance(heads, (bool, float)) or (isinstance(heads, list) and heads and isinstance(heads[0], bool)
                                            and len(heads) != n_heads):
        assert kind == "error", f"heads={heads!r} was accepted"
        return
    if isinstance(heads, int) and not -n_heads <= heads < n_heads:
        assert kind == "error"
        return
    if isinstance(heads, list) and heads and not isinstance(heads[0], bool) and not all(-n_heads <= h < n_heads for h in heads):
        assert kind == "error"
        return
    assert kind == "ok", f"heads={heads!r}, positions={positions!r} refused: {got}"
    expected = z.clone()
    head_index = slice(None) if heads is None else (torch.tensor(heads) if isinstance(heads, list) else heads)
    pos_index = slice(None) if positions is None else positions
    if isinstance(head_index, torch.Tensor) and head_index.dtype != torch.bool:
        head_index = head_index % n_heads
    if not (isinstance(head_index, torch.Tensor) and head_index.numel() == 0):
        expected[:, pos_index, head_index] = 0
    assert torch.equal(got, expected)


# ---------------------------------------------------------------- tokens
token_strategy = st.one_of(
    st.lists(st.lists(st.integers(-3, VOCAB + 3), min_size=1, max_size=6), min_size=1, max_size=3)
    .filter(lambda rows: len({len(r) for r in rows}) == 1).map(lambda rows: torch.tensor(rows)),
    st.lists(st.floats(0, 90), min_size=1, max_size=6).map(lambda v: torch.tensor(v)),
    st.lists(st.booleans(), min_size=1, max_size=6).map(lambda v: torch.tensor(v)),
    st.just(torch.zeros((0, 5), dtype=torch.long)), st.just(torch.zeros((2, 0), dtype=torch.long)),
    st.just(torch.zeros((1, 2, 3), dtype=torch.long)),
)


@PROFILE
@given(tokens=token_strategy)
def test_token_ids_give_hfs_logits_or_error(built, tokens):
    model = built.model
    valid = (tokens.dtype == torch.long and tokens.ndim in (1, 2) and tokens.numel() > 0
             and bool(((tokens >= 0) & (tokens < VOCAB)).all()))
    kind, got = _call(lambda: model(tokens))
    if not valid:
        assert kind == "error", f"tokens {tokens.tolist()} ({tokens.dtype}) were accepted"
        return
    assert kind == "ok", got
    with torch.no_grad():
        reference = built.reference(tokens.reshape(-1, tokens.shape[-1])).logits
    assert torch.equal(got, reference)


# ---------------------------------------------------------------- names
@PROFILE
@given(name=st.one_of(st.sampled_from(["blocks.0.attn.z", "blocks.1.resid_post", "embed", "ln_final.out"]),
                      st.text(max_size=20), st.just("blocks.*.resid_post"), st.just("blocks.9.attn.z"),
                      st.integers(), st.none()))
def test_hook_point_takes_one_exact_name(built, name):
    model = built.model
    kind, got = _call(lambda: model.hook_point(name))
    if isinstance(name, str) and name in model.names:
        assert kind == "ok" and got.name == name
    else:
        assert kind == "error", f"hook_point({name!r}) returned {got!r}"


@PROFILE
@given(key=st.one_of(st.none(), st.integers(), st.just(""), st.just("blocks.*.nothing"), st.text(max_size=8)))
def test_hook_keys_that_name_nothing_are_errors(built, key):
    model = built.model
    kind, _got = _call(lambda: model.run_with_hooks(built.tokens, {key: lambda x, ctx: None}))
    matches = isinstance(key, str) and key in model.names
    if not matches:
        assert kind == "error", f"hook key {key!r} was accepted"


# ---------------------------------------------------------------- hook returns
@PROFILE
@given(dtype=st.sampled_from([torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.int64,
                              torch.int32, torch.bool, torch.complex64]),
       shape_change=st.sampled_from([None, "drop", "extra", "short"]))
def test_hook_returns_are_cast_or_refused(built, dtype, shape_change):
    model = built.model
    _, clean = model.run_with_cache(built.tokens, NAME)

    def hook(x, ctx):
        y = x.to(dtype)
        if shape_change == "drop":
            y = y[0]
        elif shape_change == "extra":
            y = y[None]
        elif shape_change == "short":
            y = y[:, :-1]
        return y

    def run():
        with model.hooks({NAME: hook}):
            return model.run_with_cache(built.tokens, NAME)[1][NAME]

    kind, got = _call(run)
    if shape_change is not None or not dtype.is_floating_point:
        assert kind == "error", f"a {dtype} return of changed shape {shape_change} was accepted"
    else:
        assert kind == "ok", got
        assert got.dtype == clean[NAME].dtype
        torch.testing.assert_close(got, clean[NAME].to(dtype).to(got.dtype), atol=0, rtol=0)


# ---------------------------------------------------------------- metrics and prompt pairs
@PROFILE
@given(shape=st.lists(st.integers(0, 4), max_size=3), dtype=st.sampled_from([torch.float32, torch.int64,
                                                                                torch.bool, torch.complex64]),
       as_python=st.booleans())
def test_metric_values_keep_the_contract(shape, dtype, as_python):
    value = torch.zeros(shape, dtype=dtype)
    candidate = value.tolist() if as_python else value
    kind, _got = _call(lambda: checked_metric_value(candidate, BATCH))
    if not as_python and tuple(shape) == (BATCH,) and not dtype.is_complex:
        assert kind == "ok"
    else:
        assert kind == "error", f"metric value {candidate!r} accepted"


@PROFILE
@given(clean_len=st.integers(0, 5), corrupted_len=st.integers(0, 5), n_answers=st.integers(0, 3),
       answer=st.integers(-2, VOCAB + 2))
def test_prompt_pairs_check_their_shapes(clean_len, corrupted_len, n_answers, answer):
    clean = torch.randint(3, VOCAB, (2, clean_len)) if clean_len else torch.zeros((2, 0), dtype=torch.long)
    corrupted = torch.randint(3, VOCAB, (2, corrupted_len)) if corrupted_len else torch.zeros((2, 0), dtype=torch.long)
    answers = torch.full((n_answers,), answer)
    kind, _got = _call(lambda: PromptPairs(clean, corrupted, answers, answers.clone()))
    if clean_len != corrupted_len or clean_len == 0 or n_answers != 2 or answer < 0:
        assert kind == "error", "mismatched prompt pairs were accepted"


# ---------------------------------------------------------------- padded batches
@settings(max_examples=15, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lengths=st.lists(st.integers(1, POS), min_size=2, max_size=3), side=st.sampled_from(["left", "right"]),
       position=st.integers(-4, -1))
def test_single_position_readers_skip_padding(built, lengths, side, position):
    """DLA at a negative position on a padded batch equals each prompt run alone."""
    model = built.model
    width = max(lengths)
    tokens = built.tokens[: len(lengths), :width].clone()
    mask = torch.zeros_like(tokens)
    for i, n in enumerate(lengths):
        mask[i, slice(width - n, width) if side == "left" else slice(0, n)] = 1
    kind, got = _call(lambda: ms.direct_logit_attribution(model, tokens, 5, position=position, attention_mask=mask))
    if any(n < -position for n in lengths):
        assert kind == "error"
        return
    assert kind == "ok", got
    for i in range(len(lengths)):
        alone = ms.direct_logit_attribution(model, tokens[i, mask[i].bool()][None], 5, position=position)
        torch.testing.assert_close(got.logit[i], alone.logit[0], atol=1e-4, rtol=0)
