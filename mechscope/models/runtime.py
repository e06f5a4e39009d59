"""The hook engine: fires named hooks from PyTorch module hooks and the attention function.

Nothing is installed until a hook or a cache asks for a name: each module carries a
PyTorch hook only while some registered entry needs one of its names, and attention runs
the model's own kernel unless this layer's pattern or scores are wanted.
"""

from __future__ import annotations

import inspect
import weakref
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..errors import (
    ExtensionError,
    HookDeviceError,
    HookDtypeError,
    HookReturnError,
    HookShapeError,
    MechscopeError,
    MetricError,
    SignatureError,
    UnknownActivationError,
)
from .attention import attach_attention, explicit_attention
from .extension import NewPoint
from .hook_points import HookPoint
from .norms import FrozenNorm
from .selection import Heads, Positions, index_for
from .split_inputs import (
    PART_OF,
    HeadsReadResidual,
    assemble,
    expanded,
    head_projection,
    own_part,
    plain_norm,
    project_heads,
    unchanged,
)

if TYPE_CHECKING:
    from .hooked import HookedModel

HookFn = Callable[[torch.Tensor, "HookContext"], torch.Tensor | None]


HOOK_SIGNATURE = "fn(tensor, ctx) -> tensor | None"


def check_signature(fn: object, n_args: int, what: str, signature: str) -> None:
    """Raise `SignatureError` now if ``fn`` is not callable or visibly cannot take ``n_args``
    positional arguments (``*args`` callables and `functools.partial` pass). Callables whose
    signature cannot be read (some builtins) are checked when called, by `call_user`."""
    if not callable(fn):
        raise SignatureError(f"{what} must be a function {signature}, got {type(fn).__name__}")
    try:
        params = inspect.signature(fn)
    except (TypeError, ValueError):
        return
    try:
        params.bind(*range(n_args))
    except TypeError as e:
        raise SignatureError(f"{what} is called as {signature}, but {_label(fn)}{params} cannot take "
                             f"{n_args} positional argument{'s' if n_args > 1 else ''} ({e})") from None


def call_user(fn: Callable, args: tuple, what: str, signature: str) -> Any:
    """``fn(*args)`` for a user function. A `TypeError` of the call itself (not of ``fn``'s
    body) becomes a `SignatureError` stating ``signature``; any other non-mechscope exception
    gets a note naming ``what`` (its type is kept)."""
    try:
        return fn(*args)
    except Exception as e:
        if isinstance(e, TypeError) and e.__traceback__ is not None and e.__traceback__.tb_next is None:
            raise SignatureError(f"{what} could not be called as {signature}: {e}") from e
        if not isinstance(e, MechscopeError):
            e.add_note(f"(raised in {what})")
        raise


def _label(fn: object) -> str:
    return getattr(fn, "__qualname__", None) or type(fn).__name__


def checked_replacement(result: object, like: torch.Tensor, what: str, received: str) -> torch.Tensor:
    """The one rule for a tensor a user function returns in place of ``like`` (an activation,
    a selection of one, or a gradient): same shape and device; a floating ``result`` of
    another floating dtype (float64 or float32 computed for a bf16 activation, ...) is cast to
    ``like``'s dtype; any other dtype mismatch (integer, bool, complex) is rejected. Errors
    name ``what`` (e.g. "hook on 'blocks.3.resid_post'") and ``received`` (what it was given).
    """
    expected = f"a tensor of shape {tuple(like.shape)}, dtype {like.dtype} on {like.device} ({received} it received)"
    if not isinstance(result, torch.Tensor):
        raise HookReturnError(f"{what} returned {type(result).__name__}, expected {expected} or None")
    if result.shape != like.shape:
        raise HookShapeError(f"{what} returned {tuple(result.shape)}, expected a tensor of shape "
                             f"{tuple(like.shape)} ({received} it received)")
    if result.device != like.device:
        raise HookDeviceError(f"{what} returned a tensor on {result.device}, expected one on {like.device} "
                              f"(where {received} it received is)")
    if result.dtype != like.dtype:
        if not (result.dtype.is_floating_point and like.dtype.is_floating_point):
            raise HookDtypeError(f"{what} returned dtype {result.dtype}, expected {like.dtype} (the dtype of "
                                 f"{received} it received; floating returns are cast to it, others are rejected)")
        result = result.to(like.dtype)
    return result


def checked_loss(value: object, what: str) -> torch.Tensor:
    """``value`` if it is a scalar tensor that can be backpropagated (it depends on the
    logits, with grad mode on); otherwise a `MetricError` naming ``what``."""
    if not isinstance(value, torch.Tensor):
        raise MetricError(f"{what} must return a scalar tensor computed from the logits, got {type(value).__name__}")
    if value.numel() != 1:
        raise MetricError(f"{what} must return a scalar, got shape {tuple(value.shape)}")
    if not value.requires_grad:
        raise MetricError(f"{what} returned a tensor with no gradient: it does not depend on the logits "
                          "(a constant, or computed with .detach(), .item(), numpy or under torch.no_grad())")
    if not value.dtype.is_floating_point:
        raise MetricError(f"{what} must return a real floating scalar, got dtype {value.dtype}")
    return value


@dataclass(frozen=True)
class HookContext:
    """What a hook function is told about the activation it receives."""

    name: str
    layer: int | None
    point: HookPoint
    heads: Heads = None
    positions: Positions = None


@dataclass(eq=False)
class Entry:
    """One function registered on one hook point (forward, or backward on the gradient).
    ``fn``'s signature is checked here, at registration (see `check_signature`)."""

    point: HookPoint
    fn: HookFn
    heads: Heads = None
    positions: Positions = None
    backward: bool = False
    context: HookContext = field(init=False)
    what: str = field(init=False)  # how errors name it: "hook on 'blocks.3.resid_post'"

    def __post_init__(self) -> None:
        self.context = HookContext(self.point.name, self.point.layer, self.point, self.heads, self.positions)
        self.what = f"{'backward ' if self.backward else ''}hook on {self.point.name!r}"
        check_signature(self.fn, 2, self.what, HOOK_SIGNATURE)

    def run(self, x: torch.Tensor) -> torch.Tensor:
        """Call ``fn`` on the selected part of ``x``; return ``x`` with its replacement, which
        must pass `checked_replacement`."""
        index = index_for(x.shape, self.point.pos_dim, self.point.head_dim, self.heads, self.positions, x.device)
        part = x if index is None else x[index]
        result = call_user(self.fn, (part, self.context), self.what, HOOK_SIGNATURE)
        if result is None:
            if index is None:
                return x
            result = part  # the selection is a copy: carry in-place edits back
        received = ("the gradient" if self.backward else "the activation") + (" selection" if index is not None else "")
        result = checked_replacement(result, part, self.what, received)
        return result if index is None else x.index_put(index, result)


class HookRuntime:
    """Registry of active entries and the PyTorch hooks that serve them."""

    def __init__(self, model: HookedModel, points: list[HookPoint]):
        self._model = weakref.ref(model)
        self.points = {p.name: p for p in points}
        self.entries: dict[str, list[Entry]] = defaultdict(list)
        self._handles: dict[tuple[str, str], torch.utils.hooks.RemovableHandle] = {}
        self._z_stash: dict[int, torch.Tensor] = {}
        self._resid_stash: dict[int, torch.Tensor] = {}  # per layer: the input of ln1 (split inputs)
        self.batch_size = 0  # of the running forward (see forward_batch); 0 outside one
        # Module hooks serve groups of points: (module path, "pre" | "post") -> points in order.
        self._groups: dict[tuple[str, str], list[HookPoint]] = defaultdict(list)
        ln1 = model.adapter.components.ln1
        for point in points:
            kind = point.site.kind
            if kind in ("output", "head_out") and point.module_path:
                self._groups[(point.module_path, "post")].append(point)
            elif kind in ("input", "input_inplace", "input_copy", "renorm_input"):
                self._groups[(point.module_path, "pre")].append(point)
            elif kind == "split_input":
                self._groups[(point.module_path, "split")].append(point)
            if kind == "head_out":
                self._groups[(self._o_proj_path(point.layer), "pre")].append(point)
            if kind in ("split_input", "renorm_input") and ln1 is not None:  # they start from ln1's input
                self._groups[(self._block_path(point.layer, ln1), "stash")].append(point)
        self._layer_attention: dict[int, list[HookPoint]] = defaultdict(list)
        for point in points:
            if point.site.kind == "attention":
                self._layer_attention[point.layer].append(point)
        attach_attention(model, self)

    # ----------------------------------------------------------------- registration
    def add_points(self, new: Sequence[NewPoint]) -> list[HookPoint]:
        """Make an extension's points nameable, each listed after its source (and the points
        already computed from it). They fire only through `fire`. Returns their `HookPoint`s."""
        names = self.model.names
        added: list[HookPoint] = []
        if isinstance(new, (str, NewPoint)) or not isinstance(new, Iterable):
            raise ExtensionError(f"an extension's hook_points() must return a sequence of NewPoint objects, got "
                                 f"{type(new).__name__}")
        try:
            for spec in new:
                if not isinstance(spec, NewPoint):
                    raise ExtensionError(f"an extension's hook_points() must return NewPoint objects, got "
                                         f"{type(spec).__name__}")
                if spec.name in self.points:
                    raise MechscopeError(f"{spec.name!r} already exists (is the extension that adds it attached twice?)")
                source = self.points.get(spec.source)
                if source is None:
                    raise UnknownActivationError(spec.source, names)
                if "p" not in spec.layout and "q" not in spec.layout or not spec.layout.startswith("b"):
                    raise MechscopeError(f"{spec.name!r}: layout {spec.layout!r} needs a batch axis first and a "
                                         "position axis (p)")
                suffix = source.suffix + spec.name[len(source.name):] if spec.name.startswith(source.name) else spec.name
                point = HookPoint(spec.name, source.layer, suffix, None, "", spec.layout, width=spec.width,
                                  n_heads=spec.n_heads, source=source.name)
                at = names.index(source.name) + 1
                while at < len(names) and self.points[names[at]].source == source.name:
                    at += 1
                names.insert(at, point.name)
                self.points[point.name] = point
                added.append(point)
        except Exception:
            self.remove_points(added)
            raise
        return added

    def remove_points(self, points: list[HookPoint]) -> None:
        for point in points:
            if self.points.get(point.name) is point:
                self.entries.pop(point.name, None)
                self.points.pop(point.name)
                self.model.names.remove(point.name)

    @property
    def model(self) -> HookedModel:
        model = self._model()
        if model is None:  # pragma: no cover - the runtime never outlives its model in practice
            raise MechscopeError("the HookedModel this runtime belongs to was garbage collected")
        return model

    def add(self, entries: list[Entry]) -> None:
        """Register entries (in order), then install the module hooks they need."""
        try:
            for entry in entries:
                self.entries[entry.point.name].append(entry)
        finally:
            self._sync_module_hooks()

    def remove(self, entries: list[Entry]) -> None:
        """Unregister entries, then drop module hooks nothing needs any more."""
        try:
            for entry in entries:
                bucket = self.entries.get(entry.point.name, [])
                if entry in bucket:
                    bucket.remove(entry)
                if not bucket:
                    self.entries.pop(entry.point.name, None)
        finally:
            self._sync_module_hooks()

    def clear(self) -> None:
        self.entries.clear()
        self._sync_module_hooks()

    @contextmanager
    def forward_batch(self, batch_size: int) -> Iterator[None]:
        """Within the block, batch-1 activations (broadcast by the model, e.g. GPT-2's position
        embeddings) are expanded to ``batch_size``; outside it nothing is expanded."""
        previous, self.batch_size = self.batch_size, batch_size
        try:
            yield
        finally:
            self.batch_size = previous

    @property
    def has_backward(self) -> bool:
        return any(e.backward for bucket in self.entries.values() for e in bucket)

    def _active(self, point: HookPoint) -> bool:
        return bool(self.entries.get(point.name))

    def _sync_module_hooks(self) -> None:
        """Install a module hook for each group with an active point; remove the others."""
        hf = self.model.hf
        for key, points in self._groups.items():
            wanted = any(self._active(p) for p in points)
            if wanted and key not in self._handles:
                module = hf.get_submodule(key[0])
                if key[1] == "pre":
                    handle = module.register_forward_pre_hook(self._pre_hook(points), with_kwargs=True)
                elif key[1] == "stash":
                    handle = module.register_forward_pre_hook(self._stash_hook(points[0].layer), with_kwargs=True)
                elif key[1] == "split":
                    handle = module.register_forward_hook(self._split_hook(points), with_kwargs=True)
                else:
                    handle = module.register_forward_hook(self._post_hook(points), with_kwargs=True)
                self._handles[key] = handle
            elif not wanted and key in self._handles:
                self._handles.pop(key).remove()
        self._z_stash.clear()
        self._resid_stash.clear()

    # ----------------------------------------------------------------- firing
    def fire(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """Run forward entries on ``x`` then attach backward entries; return the final tensor."""
        x = self.fire_forward(name, x)
        self.attach_backward(name, x)
        return x

    def fire_forward(self, name: str, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] == 1 and self.batch_size > 1:  # e.g. GPT-2's position embeddings, [1, pos, d]
            x = x.expand(self.batch_size, *x.shape[1:])
        for entry in self.entries.get(name, ()):
            if not entry.backward:
                x = entry.run(x)
        return x

    def attach_backward(self, name: str, x: torch.Tensor) -> None:
        backward = [e for e in self.entries.get(name, ()) if e.backward]
        if not backward:
            return
        if not torch.is_grad_enabled():
            raise MechscopeError(
                f"backward hooks on {name!r} need gradients, but grad mode is off "
                "(call outside torch.no_grad() / torch.inference_mode())"
            )
        if not x.requires_grad:
            if x.grad_fn is not None:  # pragma: no cover - a grad_fn implies requires_grad
                raise MechscopeError(f"cannot take gradients at {name!r}")
            x.requires_grad_(True)  # nothing upstream needs gradients: start the graph here
        for entry in backward:
            x.register_hook(lambda grad, entry=entry: entry.run(grad))

    # ----------------------------------------------------------------- module hooks
    def _pre_hook(self, points: list[HookPoint]):
        def hook(module: nn.Module, args: tuple, kwargs: dict):
            in_args = bool(args)
            x = args[0] if in_args else kwargs["hidden_states"]
            original = x
            for point in points:
                if not self._active(point):
                    continue
                if point.site.kind == "head_out":
                    self._z_stash[point.layer] = x
                elif point.site.kind == "input_inplace":
                    new = self.fire_forward(point.name, x)
                    if new is not x:
                        x.copy_(new)  # the caller keeps this same tensor as the residual
                    self.attach_backward(point.name, x)
                elif point.site.kind == "input_copy":  # the module reads a copy; the residual stays
                    x = self.fire(point.name, x.clone())
                elif point.site.kind == "renorm_input":  # through the shared pre-norm, recomputed
                    resid = self._resid_stash[point.layer]
                    new = self.fire(point.name, resid.clone())
                    if self._changed(point, new, resid):
                        x = plain_norm(self._ln1(point.layer), new)
                else:
                    x = self.fire(point.name, x)
            if x is original:
                return None
            if in_args:
                return (x, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": x}

        return hook

    def _post_hook(self, points: list[HookPoint]):
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any):
            is_tuple = isinstance(output, tuple)
            x = output[0] if is_tuple else output
            original = x
            for point in points:
                if not self._active(point):
                    continue
                if point.site.kind == "head_out":
                    x = self._fire_head_out(point, module, args, kwargs, x)
                elif point.site.chunk is not None:
                    x = self._fire_chunk(point, x)
                else:
                    x = self.fire(point.name, x)
            if x is original:
                return None
            return (x, *output[1:]) if is_tuple else x

        return hook

    # ----------------------------------------------------------------- split inputs
    def _block_path(self, layer: int, path: str) -> str:
        return f"{self.model.adapter.layers}.{layer}.{path}"

    def _ln1(self, layer: int) -> nn.Module | None:
        ln1 = self.model.adapter.components.ln1
        return None if ln1 is None else self.model.hf.get_submodule(self._block_path(layer, ln1))

    def _stash_hook(self, layer: int):
        """Keeps the residual ln1 reads (``resid_pre`` as hooks left it) for the split inputs."""
        def hook(module: nn.Module, args: tuple, kwargs: dict):
            self._resid_stash[layer] = args[0] if args else kwargs["hidden_states"]

        return hook

    def _changed(self, point: HookPoint, new: torch.Tensor, resid: torch.Tensor) -> bool:
        """Whether a split point's value must be recomputed from: a hook changed it (replaced
        or edited in place), or its gradient is wanted."""
        if any(e.backward for e in self.entries.get(point.name, ())):
            return True
        if torch.is_grad_enabled() and new.requires_grad and new is not resid:  # a hook's own graph
            return True
        return not unchanged(new, resid)

    def _split_hook(self, points: list[HookPoint]):
        """Forward hook on a q/k/v (or fused qkv) projection: fires the layer's split inputs it
        serves and recomputes, per head, the parts whose inputs changed (see `split_inputs`)."""
        model = self.model
        layer = points[0].layer
        fused = model.adapter.components.qkv

        def hook(module: nn.Module, args: tuple, kwargs: dict, output: torch.Tensor):
            norm = self._ln1(layer)
            if norm is None:  # no pre-norm: the projection reads the residual itself
                resid = args[0] if args else next(iter(kwargs.values()))
            else:
                resid = self._resid_stash[layer]
            parts: dict[int, torch.Tensor] = {}
            for point in points:
                if not self._active(point):
                    continue
                new = self.fire(point.name, expanded(resid, point.n_heads))
                # gradients wanted at this point, or through what a hook returned (a learned edge
                # mask rebuilds the input with equal values but its own autograd graph)
                wants_grad = any(e.backward for e in self.entries.get(point.name, ())) or (
                    torch.is_grad_enabled() and new.requires_grad)
                same = unchanged(new, resid)
                if same and not wants_grad:
                    continue  # read only: the model's own projection stands
                which = PART_OF[point.suffix]
                weight, bias = head_projection(model, layer, which)
                if same:  # the model's output, with gradients per head (no per-head forward)
                    own = own_part(output, fused, which, point.n_heads, model.cfg).detach()
                    parts[which] = HeadsReadResidual.apply(new, own, resid, weight, norm, model.adapter.norm)
                else:
                    parts[which] = project_heads(plain_norm(norm, new), weight, bias)
            if not parts:
                return None
            return assemble(output, fused, parts, model.cfg)

        return hook

    def _fire_chunk(self, point: HookPoint, x: torch.Tensor) -> torch.Tensor:
        index, n_chunks = point.site.chunk
        chunks = list(x.chunk(n_chunks, dim=-1))
        chunks[index] = self.fire(point.name, chunks[index])
        return torch.cat(chunks, dim=-1)  # rebuilt so gradients flow through the fired chunk

    def _o_proj_path(self, layer: int) -> str:
        adapter = self.model.adapter
        return f"{adapter.layers}.{layer}.{adapter.components.o.path}"

    def _fire_head_out(self, point: HookPoint, module: nn.Module, args: tuple, kwargs: dict, out: torch.Tensor):
        """Per-head contributions `[b, p, h, d]`; if a hook changes them, ``attn.out`` becomes their sum."""
        model = self.model
        layer = point.layer
        z = self._z_stash.pop(layer)
        cfg = model.cfg
        z = z.reshape(*z.shape[:-1], cfg.n_heads, cfg.d_head)
        w_o = model.W_O[layer].to(z.dtype)  # [h, d_head, d_model]
        heads = torch.einsum("bphe,hed->bphd", z, w_o)
        b_o = model.b_O[layer]
        if model.adapter.attn_out_norm is not None:
            norm_input = args[0] if args else kwargs["hidden_states"]
            frozen = FrozenNorm(module, model.adapter.norm, norm_input)
            heads = frozen.apply(heads, head_axis=True)
            bias = frozen.bias
        else:
            bias = b_o
        new = self.fire(point.name, heads)
        if new is heads:
            return out
        summed = new.sum(dim=2)
        return summed if bias is None else summed + bias.to(summed.dtype)

    # ----------------------------------------------------------------- attention
    def attention_active(self, layer: int) -> bool:
        return any(self._active(p) for p in self._layer_attention.get(layer, ()))

    def run_attention(self, layer: int, base: Callable, module: nn.Module, query, key, value, mask, kwargs: dict):
        """Fire q/k/v, attention, scores/pattern and z for one layer.

        ``query`` `[b, h, q, d_head]`, ``key``/``value`` `[b, kv_h, k, d_head]`; returns
        ``(z [b, q, h, d_head], pattern or None)`` as transformers' attention functions do.
        """
        prefix = f"blocks.{layer}.attn."
        explicit = [p for p in self._layer_attention[layer] if p.explicit_attention]
        query = self.fire(prefix + "q", query.transpose(1, 2)).transpose(1, 2)
        key = self.fire(prefix + "k", key.transpose(1, 2)).transpose(1, 2)
        value = self.fire(prefix + "v", value.transpose(1, 2)).transpose(1, 2)
        if any(self._active(p) for p in explicit):
            z, weights = explicit_attention(
                module,
                query,
                key,
                value,
                mask,
                scaling=kwargs.get("scaling"),
                softcap=kwargs.get("softcap"),
                upcast=kwargs.get("_mechscope_upcast", False),
                on_scores=lambda s: self.fire(prefix + "scores", s),
                on_pattern=lambda p: self.fire(prefix + "pattern", p),
            )
        else:
            z, weights = base(module, query, key, value, mask, **kwargs)
        return self.fire(prefix + "z", z), weights
