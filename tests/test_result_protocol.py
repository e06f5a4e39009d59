"""The result protocol, checked on real instances of every result class (in the spirit of
scikit-learn's ``check_estimator``).

Every subclass of `mechscope.result.Result` is found by importing the whole package; each
must have a builder here (a new class without one fails `test_every_result_class_is_checked`),
and every class of the package that looks like a result (``to_dataframe``/``_repr_html_``)
must derive from `Result`. The checks: a tidy non-empty DataFrame holding no model objects;
``top(n)`` at most n rows, ranked, NaN never ranked, selections filtering; ``plot()`` a plotly
figure whose values are exactly the frame's and which hovers and centres signed scales at 0;
``_repr_html_`` a string; ``save``/``load`` round trips; no attribute reaches a model.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import pkgutil
import types

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
import torch
from conftest import build_tiny

import mechscope as ms
import mechscope.circuits
from mechscope.data.facts import FactPrompt
from mechscope.data.tasks import PromptPairs
from mechscope.errors import ResultFileError, SelectionError
from mechscope.result import RESULT_CLASSES, Result
from mechscope.sae.evaluate import evaluate_sae
from mechscope.sae.features import collect_features
from mechscope.sae.train import init_sae

HOOK = "blocks.0.resid_post"


def _import_everything() -> None:
    for info in pkgutil.walk_packages(ms.__path__, "mechscope."):
        importlib.import_module(info.name)


@pytest.fixture(scope="module")
def tiny():
    return build_tiny("llama")


@pytest.fixture(scope="module")
def sae():
    built = init_sae(ms.SAE(ms.SAEConfig(d_in=64, d_sae=32, architecture="relu", hook_name=HOOK)), seed=3)
    with torch.no_grad():
        built.W_enc.mul_(3.0)
        built.b_enc.fill_(-0.2)
    return built


def _pairs(seed: int = 0, n: int = 3, pos: int = 8) -> PromptPairs:
    gen = torch.Generator().manual_seed(seed)
    clean = torch.randint(3, 97, (n, pos), generator=gen)
    corrupted = clean.clone()
    corrupted[:, 2] = torch.randint(3, 97, (n,), generator=gen)
    return PromptPairs(clean, corrupted, torch.randint(3, 97, (n,), generator=gen), torch.randint(3, 97, (n,), generator=gen))


def _patching(tiny, sae):
    model, pairs = tiny.model, _pairs()
    labels = [f"t{i}" for i in range(8)]
    yield ms.activation_patching(model, pairs, "blocks.*.resid_pre")  # layer x position
    yield ms.activation_patching(model, pairs, "blocks.*.attn.z", over=("head", "pos"), direction="noise")
    yield ms.activation_patching(model, pairs, "blocks.*.mlp.out", over=())  # whole layers: a line
    yield ms.attribution_patching(model, pairs, "heads")  # layer x head
    path = ms.path_patching(model, pairs)
    path.pos_labels = labels
    yield path


def _trace(tiny, sae):
    tokens = tiny.tokens[0]
    with torch.no_grad():
        attribute = int(tiny.model(tokens[None])[0, -1].topk(2).indices[1])
    fact = FactPrompt("", "", "", tokens, torch.tensor([3, 4, 5]), attribute)
    yield ms.causal_trace(tiny.model, fact, n_samples=2)


def _lens(tiny, sae):
    yield ms.logit_lens(tiny.model, tiny.tokens, target="next")  # NaN at the last position
    yield ms.logit_lens(tiny.model, tiny.tokens)
    yield ms.logit_lens(tiny.model, tiny.tokens, target="next", stats="target_logprob")  # the fast path
    yield ms.logit_lens(tiny.model, tiny.tokens, target=5, stats="target_rank")


def _dla(tiny, sae):
    yield ms.direct_logit_attribution(tiny.model, tiny.tokens, (5, 7))


def _heads(tiny, sae):
    yield ms.head_scores(tiny.model, tiny.tokens)


def _windows() -> torch.Tensor:
    return torch.randint(3, 97, (11, 8), generator=torch.Generator().manual_seed(2))


def _evaluation(tiny, sae):
    yield evaluate_sae(tiny.model, sae, _windows(), batch_size=4)


def _features(tiny, sae):
    features = collect_features(tiny.model, sae, _windows(), batch_size=4, progress=False)
    features.labels[1] = "a label"
    yield features


def _report(tiny, sae):
    features = collect_features(tiny.model, sae, _windows(), batch_size=4, progress=False)
    yield features.latent(tiny.model, sae, int(features.fire_counts.argmax()), n_top=3, n_quantiles=2, per_quantile=2)


def _circuits(tiny, sae):
    model, pairs = tiny.model, _pairs()
    yield ms.circuits.attribute(model, pairs)  # edge scores
    yield ms.circuits.attribute(model, pairs, level="node")


def _circuit(tiny, sae):
    yield ms.circuits.attribute(tiny.model, _pairs()).greedy(12)


def _faithfulness(tiny, sae):
    model, pairs = tiny.model, _pairs()
    yield ms.circuits.faithfulness(model, pairs, ms.circuits.attribute(model, pairs), percents=(10, 50, 100),
                                   n_bootstrap=20)


def _attribution_graph(tiny, sae):
    transcoders = ms.TranscoderSet.fresh(tiny.model, d_sae=16, k=2, seed=1)
    yield ms.attribution_graph(tiny.model, transcoders, tiny.tokens[:1, :6], max_logits=2, progress=False)


def _transcoder_evaluation(tiny, sae):
    transcoders = ms.TranscoderSet.fresh(tiny.model, d_sae=16, k=2, seed=1)
    yield ms.evaluate_transcoders(tiny.model, transcoders, _windows()[:4])


def _head_loadings(tiny, sae):
    transcoders = ms.TranscoderSet.fresh(tiny.model, d_sae=16, k=2, seed=1)
    graph = ms.attribution_graph(tiny.model, transcoders, tiny.tokens[:1, :6], max_logits=2, progress=False).prune()
    yield ms.head_loadings(tiny.model, transcoders, graph)


def _graph_aggregate(tiny, sae):
    transcoders = ms.TranscoderSet.fresh(tiny.model, d_sae=16, k=2, seed=1)
    graphs = [ms.attribution_graph(tiny.model, transcoders, tiny.tokens[i : i + 1, :6], max_logits=2,
                                   progress=False).prune() for i in range(2)]
    yield ms.aggregate_graphs(graphs)


BUILDERS = {
    "AttributionGraph": _attribution_graph,
    "GraphAggregate": _graph_aggregate,
    "HeadLoadings": _head_loadings,
    "TranscoderSetEvaluation": _transcoder_evaluation,
    "PatchingResult": _patching,
    "CausalTrace": _trace,
    "LensResult": _lens,
    "DLAResult": _dla,
    "HeadScores": _heads,
    "SAEEvaluation": _evaluation,
    "FeatureData": _features,
    "LatentReport": _report,
    "CircuitScores": _circuits,
    "Circuit": _circuit,
    "FaithfulnessCurve": _faithfulness,
}


def _mechscope_results() -> dict[str, type]:
    _import_everything()
    return {name: cls for name, cls in RESULT_CLASSES.items() if cls.__module__.startswith("mechscope.")}


def test_every_result_class_is_checked():
    missing = sorted(set(_mechscope_results()) - set(BUILDERS))
    assert not missing, f"result classes without a builder in tests/test_result_protocol.py: {missing}"


def test_every_result_like_class_follows_the_protocol():
    _import_everything()
    outside = []
    for info in pkgutil.walk_packages(ms.__path__, "mechscope."):
        module = importlib.import_module(info.name)
        for name, cls in vars(module).items():
            if (inspect.isclass(cls) and cls.__module__ == module.__name__ and not issubclass(cls, Result)
                    and any(hasattr(cls, a) for a in ("to_dataframe", "_repr_html_"))):
                outside.append(f"{module.__name__}.{name}")
    assert not outside, f"classes that look like results but do not derive from mechscope.result.Result: {outside}"


def _instances():
    return [pytest.param((name, i), id=f"{name}-{i}") for name in BUILDERS
            for i in range(_COUNTS.get(name, 1))]


_COUNTS = {"PatchingResult": 5, "LensResult": 4, "CircuitScores": 2}
_BUILT: dict[tuple[str, int], Result] = {}


@pytest.fixture
def result(request, tiny, sae):
    name, index = request.param
    if (name, index) not in _BUILT:
        for i, built in enumerate(BUILDERS[name](tiny, sae)):
            _BUILT[(name, i)] = built
    return _BUILT[(name, index)]


def _model_references(obj, path: str = "result", seen: set | None = None) -> list[str]:
    """Paths from ``obj`` to a torch module (a model, an SAE) through attributes, containers
    and closures."""
    seen = set() if seen is None else seen
    if id(obj) in seen or isinstance(obj, (str, bytes, int, float, bool, type(None), torch.Tensor, np.ndarray)):
        return []
    seen.add(id(obj))
    if isinstance(obj, (torch.nn.Module, ms.HookedModel)):
        return [f"{path} ({type(obj).__name__})"]
    found: list[str] = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            found += _model_references(v, f"{path}[{k!r}]", seen)
    elif isinstance(obj, (list, tuple, set, frozenset)):
        for i, v in enumerate(obj):
            found += _model_references(v, f"{path}[{i}]", seen)
    elif isinstance(obj, (types.FunctionType, types.MethodType)):
        for i, cell in enumerate(getattr(obj, "__closure__", None) or ()):
            found += _model_references(cell.cell_contents, f"{path}.<closure {i}>", seen)
        found += _model_references(getattr(obj, "__self__", None), f"{path}.__self__", seen)
    elif isinstance(obj, pd.DataFrame):
        for column in obj.columns:
            if obj[column].dtype == object:
                found += _model_references(list(obj[column]), f"{path}[{column!r}]", seen)
    elif hasattr(obj, "__dict__") and not inspect.isclass(obj) and not inspect.ismodule(obj):
        for k, v in vars(obj).items():
            found += _model_references(v, f"{path}.{k}", seen)
    return found


def _figure_values(fig: go.Figure) -> np.ndarray:
    values = []
    for trace in fig.data:
        if isinstance(trace, go.Heatmap):
            values.append(np.asarray(trace.z, dtype=float).ravel())
        elif isinstance(trace, (go.Scatter, go.Bar)):
            values.append(np.asarray(trace.y, dtype=float).ravel())
        elif isinstance(trace, go.Histogram):
            values.append(np.asarray(trace.x, dtype=float).ravel())
        else:
            pytest.fail(f"unexpected trace type {type(trace).__name__}")
    values = np.concatenate(values) if values else np.zeros(0)
    return np.sort(values[np.isfinite(values)])


def _rank_key(result: Result, values: pd.Series) -> np.ndarray:
    values = values.to_numpy(float)
    return np.abs(values - result._baseline()) if result._signed else values


@pytest.mark.parametrize("result", _instances(), indirect=True)
def test_to_dataframe_is_tidy(result):
    frame = result.to_dataframe()
    assert isinstance(frame, pd.DataFrame) and len(frame) > 0
    assert all(isinstance(c, str) for c in frame.columns) and frame.columns.is_unique
    assert result._value in frame.columns and pd.api.types.is_numeric_dtype(frame[result._value])
    assert isinstance(frame.index, pd.RangeIndex)
    assert not _model_references(frame)


@pytest.mark.parametrize("result", _instances(), indirect=True)
def test_top_ranks_and_selects(result):
    frame = result.select()
    for n in (1, 3, len(frame) + 5):
        top = result.top(n)
        assert isinstance(top, pd.DataFrame) and len(top) <= n
        assert not top[result._value].isna().any(), "NaN was ranked"
        key = _rank_key(result, top[result._value])
        assert np.all(key[:-1] >= key[1:]), "not sorted by the ranking"
    finite = frame[result._value].notna()
    assert len(result.top(len(frame) + 5)) == int(finite.sum())
    if finite.any():  # the first ranked row is the best of all rows
        assert _rank_key(result, result.top(1)[result._value])[0] == pytest.approx(
            _rank_key(result, frame.loc[finite, result._value]).max())
    keys = [c for c in frame.columns if c not in result._mean_over and not pd.api.types.is_float_dtype(frame[c])]
    column = keys[0]
    wanted = frame[column].iloc[len(frame) // 2]
    chosen = result.top(3, **{column: wanted})
    assert len(chosen) and (chosen[column] == wanted).all()
    with pytest.raises(SelectionError, match="no column"):
        result.top(3, no_such_column=1)


@pytest.mark.parametrize("result", _instances(), indirect=True)
def test_plot_draws_the_frame(result):
    fig = result.plot()
    assert isinstance(fig, go.Figure) and len(fig.data) > 0
    expected = result.plot_data()[result.plot_column()].to_numpy(float)
    expected = np.sort(expected[np.isfinite(expected)])
    np.testing.assert_allclose(_figure_values(fig), expected, rtol=1e-12, atol=1e-12)
    for trace in fig.data:
        assert trace.hovertemplate, f"{type(trace).__name__} has no hover text"
    if result._signed and result.plot_column() == result._value:  # diverging, centred at 0
        for trace in fig.data:
            if isinstance(trace, go.Heatmap):
                centred = trace.zmid == 0 if trace.coloraxis is None else fig.layout.coloraxis.cmid == 0
                assert centred, "a signed heatmap must centre its colour scale at 0"
            elif isinstance(trace, go.Bar):
                assert trace.marker.cmid == 0
    assert fig.to_json()  # serialisable: writable as HTML
    assert isinstance(result.plot_data(), pd.DataFrame)


@pytest.mark.parametrize("result", _instances(), indirect=True)
def test_notebook_display(result):
    shown = result._repr_html_()
    assert isinstance(shown, str) and type(result).__name__ in shown and "<table" in shown
    assert isinstance(result.summary(), str)


def _equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and bool(
            torch.equal(a.nan_to_num(0.0), b.nan_to_num(0.0)) and torch.equal(a.isnan(), b.isnan())
            if a.is_floating_point() else torch.equal(a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    if dataclasses.is_dataclass(a):
        return type(a) is type(b) and all(_equal(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a))
    if isinstance(a, float) and np.isnan(a):
        return isinstance(b, float) and np.isnan(b)
    return a == b


@pytest.mark.parametrize("result", _instances(), indirect=True)
def test_save_load_round_trips(result, tmp_path):
    path = result.save(tmp_path / "result.safetensors")
    loaded = type(result).load(path)
    assert type(loaded) is type(result)
    for f in dataclasses.fields(result):
        assert _equal(getattr(result, f.name), getattr(loaded, f.name)), f.name
    pd.testing.assert_frame_equal(loaded.to_dataframe(), result.to_dataframe())
    assert type(Result.load(path)) is type(result)
    other = next(cls for name, cls in RESULT_CLASSES.items() if cls is not type(result) and name in BUILDERS)
    with pytest.raises(ResultFileError, match=f"holds a {type(result).__name__}"):
        other.load(path)


@pytest.mark.parametrize("result", _instances(), indirect=True)
def test_holds_no_model(result):
    assert not _model_references(result), _model_references(result)


def test_load_rejects_other_files(tmp_path):
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    (tmp_path / "text.safetensors").write_text("not a tensor file")
    for name in ("plain.safetensors", "text.safetensors", "missing.safetensors"):
        with pytest.raises(ResultFileError):
            Result.load(tmp_path / name)


def test_selection_forms(tiny):
    result = ms.activation_patching(tiny.model, _pairs(), "blocks.*.attn.z", over=("head", "pos"))
    frame = result.to_dataframe()
    assert set(result.top(100, layer=[1], head=range(2))["head"]) <= {0, 1}
    assert (result.top(100, pos=lambda p: p >= 6)["pos"] >= 6).all()
    assert len(result.select(layer=1, head=0)) == frame[(frame.layer == 1) & (frame["head"] == 0)].shape[0]
    smallest = result.top(1, ascending=True, by="metric")["metric"].iloc[0]
    assert smallest == frame["metric"].min()
