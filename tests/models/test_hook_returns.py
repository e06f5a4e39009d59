"""Issue 11, "Raw errors" / hook returns: one rule for what a hook may return, on every path
(a whole activation, an ``at()`` selection, a gradient, an extension's point). A floating
return of another dtype is cast to the activation's dtype; integer, bool and complex returns,
tensors on another device and non-tensors are errors naming the hook point, what came back and
what was expected; a hook that cannot take ``(tensor, ctx)`` is refused when registered."""

from __future__ import annotations

import functools

import pytest
import torch
from conftest import build_tiny

import mechscope as ms
from mechscope import errors
from mechscope.models.extension import NewPoint

NAME = "blocks.0.resid_post"
TARGETS = {"whole": NAME, "at": ms.at(NAME, positions=[1, 4])}


@pytest.fixture(scope="module")
def llama():
    return build_tiny("llama")


def _logits(tiny, hooks=None, backward=None):
    with torch.no_grad(), tiny.model.hooks(hooks, backward=backward):
        return tiny.model(tiny.tokens)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("dtype", [torch.long, torch.int32, torch.bool, torch.complex64], ids=str)
def test_integer_bool_complex_returns_are_rejected_naming_the_hook(llama, target, dtype):
    """Before: an int return truncated the activation and a bool one made it 0/1, silently."""
    with pytest.raises(errors.HookDtypeError) as info:
        _logits(llama, {TARGETS[target]: lambda x, ctx: (x * 3).to(dtype)})
    message = str(info.value)
    assert isinstance(info.value, TypeError) and isinstance(info.value, ms.MechscopeError)
    assert repr(NAME) in message and str(dtype) in message and "expected torch.float32" in message


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16], ids=str)
def test_floating_returns_are_cast_to_the_activation_dtype_on_both_paths(llama, target, dtype):
    """Before: float64 on the whole tensor crashed in the next matmul while the at() path cast
    it back; fp16 flowed on as fp16. Now both paths give the explicitly cast result."""
    scaled = _logits(llama, {TARGETS[target]: lambda x, ctx: (x * 1.5).to(dtype)})
    by_hand = _logits(llama, {TARGETS[target]: lambda x, ctx: (x * 1.5).to(dtype).float()})
    assert scaled.dtype == torch.float32
    assert torch.equal(scaled, by_hand)
    if dtype == torch.float64:  # float32 values are exact in float64: the cast loses nothing
        assert torch.equal(_logits(llama, {TARGETS[target]: lambda x, ctx: x.double()}), _logits(llama))


def test_a_bf16_model_takes_float32_returns_as_bf16():
    """A steering vector kept in float32 on a bf16 model: the hook's float32 result is cast."""
    tiny = build_tiny("qwen2")
    tiny.model.hf.to(torch.bfloat16)
    direction = torch.randn(tiny.model.cfg.d_model)
    out = _logits(tiny, {NAME: lambda x, ctx: x.float() + direction})
    by_hand = _logits(tiny, {NAME: lambda x, ctx: (x.float() + direction).to(torch.bfloat16)})
    assert out.dtype == torch.bfloat16 and torch.equal(out, by_hand)


@pytest.mark.parametrize("target", TARGETS)
def test_a_tensor_on_another_device_is_rejected(llama, target):
    """Before: a raw torch RuntimeError on the whole tensor, and silently accepted via at()."""
    with pytest.raises(errors.HookDeviceError, match=rf"'{NAME}' returned a tensor on meta, expected one on cpu"):
        _logits(llama, {TARGETS[target]: lambda x, ctx: x.to("meta")})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device as the other device")
def test_a_cuda_return_on_a_cpu_model_is_rejected(llama):
    with pytest.raises(errors.HookDeviceError, match="cuda:0, expected one on cpu"):
        _logits(llama, {NAME: lambda x, ctx: x.cuda()})


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("value", [1.0, "list", "tuple"])
def test_non_tensor_returns_name_the_hook_and_what_is_expected(llama, target, value):
    make = {"list": lambda x: [x], "tuple": lambda x: (x,)}.get(value, lambda x: value)
    with pytest.raises(errors.HookReturnError) as info:
        _logits(llama, {TARGETS[target]: lambda x, ctx: make(x)})
    got = {"list": "list", "tuple": "tuple"}.get(value, "float")
    assert f"hook on '{NAME}' returned {got}, expected a tensor of shape" in str(info.value)


def test_backward_hook_gradients_follow_the_same_rule(llama):
    """Before: a float64 gradient made torch raise "hook has changed the type of value"."""
    model, tokens = llama.model, llama.tokens

    def grads(backward):
        with model.hooks(backward=backward):
            _, cache = model.run_with_cache(tokens, "blocks.0.resid_pre",
                                            grad_metric=lambda logits: logits[:, -1, 5].sum())
        return cache.grads["blocks.0.resid_pre"]

    plain = grads(None)
    assert torch.equal(grads({NAME: lambda g, ctx: g.double()}), plain)
    halved = grads({TARGETS["at"]: lambda g, ctx: (g / 2).double()})
    assert torch.equal(halved, grads({TARGETS["at"]: lambda g, ctx: g / 2})) and not torch.equal(halved, plain)
    with pytest.raises(errors.HookDtypeError, match=rf"backward hook on '{NAME}' returned dtype torch.int64.*gradient"):
        grads({NAME: lambda g, ctx: g.long()})


def _one_arg(x):
    return x


def _three(scale, x, ctx):
    return x * scale


@pytest.mark.parametrize("fn", [lambda x: x, _one_arg, lambda: None, lambda x, ctx, extra: x])
def test_hooks_that_cannot_take_tensor_and_ctx_are_refused_at_registration(llama, fn):
    expected = r"hook on 'blocks.0.resid_post' is called as fn\(tensor, ctx\)"
    with pytest.raises(errors.SignatureError, match=expected), llama.model.hooks({NAME: fn}):
        pytest.fail("registered")  # pragma: no cover


def test_star_args_partials_and_callable_objects_are_accepted(llama):
    class Scale:
        def __call__(self, x, ctx):
            return x * 2

    expected = _logits(llama, {NAME: lambda x, ctx: x * 2})
    for fn in (lambda *args: args[0] * 2, functools.partial(_three, 2), Scale()):
        assert torch.equal(_logits(llama, {NAME: fn}), expected)


def test_an_uninspectable_builtin_with_the_wrong_arity_fails_when_called_naming_the_hook(llama):
    """``torch.relu`` has no readable signature: its TypeError at call time is re-raised."""
    with pytest.raises(errors.SignatureError, match=r"hook on 'blocks.0.resid_post' could not be called as fn\(tensor"):
        _logits(llama, {NAME: torch.relu})


def test_an_error_inside_a_hook_keeps_its_type_and_names_the_hook(llama):
    def broken(x, ctx):
        return x @ torch.ones(3, 3)

    with pytest.raises(RuntimeError) as info:
        _logits(llama, {NAME: broken})
    assert not isinstance(info.value, ms.MechscopeError)
    assert f"(raised in hook on '{NAME}')" in info.value.__notes__


_DEFAULT = object()


class _Readout:
    """Adds ``<source>.half``, half the residual, fired inside the source's hook (or returns
    ``points`` from ``hook_points``)."""

    def __init__(self, points=_DEFAULT):
        self.points = points

    def hook_points(self, model):
        return [NewPoint(f"{NAME}.half", NAME, model.cfg.d_model)] if self.points is _DEFAULT else self.points

    def hooks(self, model, fire):
        return {NAME: lambda x, ctx: 2 * fire(f"{NAME}.half", x / 2)}


def test_extension_points_follow_the_same_rule(llama):
    model = llama.model
    with model.attach(_Readout()):
        doubled = _logits(llama, {f"{NAME}.half": lambda x, ctx: (x * 2).double()})
        with pytest.raises(errors.HookDtypeError, match=rf"hook on '{NAME}.half' returned dtype torch.int64"):
            _logits(llama, {f"{NAME}.half": lambda x, ctx: x.long()})
    assert torch.equal(doubled, _logits(llama, {NAME: lambda x, ctx: x * 2}))


@pytest.mark.parametrize("points,match", [(None, "got NoneType"), (f"{NAME}.half", "got str"), ([3], "got int")])
def test_bad_extension_hook_points_are_named(llama, points, match):
    """Before: raw TypeErrors ("not iterable", or a plain TypeError for a non-NewPoint)."""
    with pytest.raises(errors.ExtensionError, match=match), llama.model.attach(_Readout(points)):
        pass  # pragma: no cover
    assert f"{NAME}.half" not in llama.model.names


@pytest.mark.parametrize("kwargs,match", [({"width": 0}, "width must be a positive int"),
                                          ({"width": True}, "width must be a positive int"),
                                          ({"width": 8, "n_heads": 0}, "n_heads must be a positive int"),
                                          ({"width": 8, "name": ""}, "name must be a non-empty string")])
def test_new_point_fields_are_checked(kwargs, match):
    with pytest.raises(errors.ExtensionError, match=match):
        NewPoint(**{"name": f"{NAME}.x", "source": NAME, **kwargs})
