"""``HookedModel``: an unmodified Hugging Face causal LM with every activation named."""

from __future__ import annotations

import dataclasses
import warnings
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from transformers import LogitsProcessor, LogitsProcessorList, PreTrainedModel

from ..errors import (
    AlreadyWrappedError,
    ArgumentTypeError,
    ContextLengthWarning,
    MechscopeError,
    SelectionError,
    UnsupportedArgumentError,
)
from .adapters import get_adapter
from .adapters.base import Adapter
from .cache import ActivationCache, recorder
from .config import ModelConfig, build_config
from .extension import Extension
from .functional import next_token_losses
from .hook_points import HookPoint, NameSpec, build_hook_points, select_names
from .linearized import linearized_at
from .norms import FrozenNorm
from .partial import last_block_needed, starting_at, stopping_after
from .runtime import Entry, HookFn, HookRuntime, checked_loss
from .selection import Heads, Positions, check_selection, running_with_mask
from .split_inputs import qk_norm_kind
from .tokens import check_token_ids, require_single_token, token_texts
from .weights import LayerWeights, Weights

TokensLike = torch.Tensor | str | Sequence[str]


@dataclass(frozen=True, eq=False)
class Target:
    """A hook target: a name (or glob) narrowed to some heads and/or positions.

    Build it with `at`. Hashable by identity, so it can be a key of a hooks dict.
    """

    name: str
    heads: Heads = None
    positions: Positions = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ArgumentTypeError(f"a hook target needs an activation name or glob (a non-empty str), got "
                                    f"{type(self.name).__name__} {self.name!r}")
        check_selection(self.heads, self.positions)


def at(name: str, heads: Heads = None, positions: Positions = None) -> Target:
    """Target ``heads`` and/or ``positions`` of ``name``: the hook receives (and returns) only that part.

    ``model.hooks({at("blocks.3.attn.z", heads=5): zero})`` zeroes head 5 of layer 3;
    the function gets `[batch, pos, d_head]` (an int head drops the head axis).
    """
    return Target(name, heads, positions)


HookKey = str | Target | Callable[[str], bool]
HookSpec = Mapping[HookKey, HookFn] | Sequence[tuple[HookKey, HookFn]]


class _LogitsHook(LogitsProcessor):
    """Fires the ``logits`` hook on each generation step's next-token logits."""

    def __init__(self, runtime: HookRuntime):
        self.runtime = runtime

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        return self.runtime.fire("logits", scores[:, None, :])[:, 0]


class HookedModel(nn.Module):
    """A Hugging Face ``PreTrainedModel`` with canonical hook points (see DESIGN.md §3).

    ``model.hf`` is the wrapped model, unchanged except that its attention is routed
    through mechscope (same kernel, same result, when no attention hook is active).
    """

    def __init__(self, hf_model: PreTrainedModel, tokenizer=None, *, adapter: Adapter | None = None,
                 default_prepend_bos: bool | None = None):
        super().__init__()
        owner = getattr(hf_model, "_mechscope_owner", None)
        owner = owner() if owner is not None else None  # a copy.deepcopy of a wrapped model keeps the reference
        if owner is not None and owner.hf is hf_model:
            raise AlreadyWrappedError(
                "this Hugging Face model is already wrapped by a live HookedModel; use that one "
                "(its .hf is this model), or wrap a copy (copy.deepcopy(hf_model)) for a second, independent wrapper")
        self.hf = hf_model.eval()
        hf_model._mechscope_owner = weakref.ref(self)
        self.tokenizer = tokenizer
        self.adapter = adapter or get_adapter(hf_model.config.model_type)
        if default_prepend_bos is None:
            default_prepend_bos = _tokenizer_adds_bos(tokenizer)
        cfg = build_config(hf_model.config, self.adapter, default_prepend_bos)
        self.cfg: ModelConfig = dataclasses.replace(
            cfg, qk_norm=qk_norm_kind(hf_model, self.adapter.layers, self.adapter.components, cfg))
        points = build_hook_points(self.adapter, self.cfg)
        self.names: list[str] = [p.name for p in points]
        self._runtime = HookRuntime(self, points)

    # ------------------------------------------------------------------ basics
    def hook_point(self, name: str) -> HookPoint:
        """The `HookPoint` (layout, width, heads, ...) of one exact name (globs: `hook_points`)."""
        if not isinstance(name, str):
            raise ArgumentTypeError(f"an activation name must be a string, got {type(name).__name__}")
        if name not in self._runtime.points:
            if any(c in name for c in "*?["):
                raise SelectionError(f"hook_point takes one exact name, not the pattern {name!r}; "
                                     "use model.hook_points(pattern) for every match")
            select_names(name, self.names)  # raises the close-match error
        return self._runtime.points[name]

    def hook_points(self, names: NameSpec = None) -> list[HookPoint]:
        """The `HookPoint`s of the names a spec selects (exact names, globs, ...), in execution order."""
        return [self._runtime.points[n] for n in select_names(names, self.names)]

    @property
    def device(self) -> torch.device:
        """The device of the first parameter (the embedding's, for a ``device_map`` model)."""
        return next(self.hf.parameters()).device

    @property
    def devices(self) -> list[torch.device]:
        """Every device holding parameters, in parameter order (more than one for a model
        loaded with a ``device_map`` that splits it)."""
        return list(dict.fromkeys(p.device for p in self.hf.parameters()))

    @property
    def dtype(self) -> torch.dtype:
        return next(self.hf.parameters()).dtype

    def forward(self, tokens: TokensLike, attention_mask: torch.Tensor | None = None, *,
                prepend_bos: bool | None = None, padding_side: str | None = None,
                logits_at: torch.Tensor | None = None, return_type: str | None = "logits",
                **unsupported) -> torch.Tensor | None:
        """Logits `[batch, pos, d_vocab]` for token ids `[batch, pos]` (or `[pos]`) or text.

        Text is tokenized with `to_tokens` (padding and attention mask included). With an
        ``attention_mask`` that contains padding, position ids are derived from it, so
        left- and right-padded prompts get the same positions as when run alone.
        logits_at: `[batch, k]` positions to unembed (default all): returns `[batch, k, d_vocab]`,
        skipping the unembedding elsewhere (equal to the full logits there up to float rounding).
        return_type: "logits"; "loss" (TransformerLens's: the mean next-token cross-entropy over
        real tokens, a scalar); None (run for the hooks' sake, return None).
        """
        _reject_unsupported("forward", unsupported)
        input_ids, attention_mask = self.prepare_inputs(tokens, attention_mask, prepend_bos=prepend_bos,
                                                       padding_side=padding_side)
        return self._run(input_ids, attention_mask, logits_at, return_type)

    def _run(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
             logits_at: torch.Tensor | None, return_type: str | None) -> torch.Tensor | None:
        """`forward` on prepared inputs: logits, the next-token loss or None (see ``return_type``)."""
        if return_type not in _RETURN_TYPES:
            raise SelectionError(f"return_type must be one of {', '.join(map(repr, _RETURN_TYPES))}, "
                                 f"got {return_type!r}")
        if return_type == "loss" and logits_at is not None:
            raise SelectionError("return_type='loss' needs the logits at every position; drop logits_at")
        logits = self._logits(input_ids, attention_mask, logits_at)
        if return_type == "loss":
            return _next_token_loss(logits, input_ids, attention_mask)
        return None if return_type is None else logits

    def _logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                logits_at: torch.Tensor | None = None) -> torch.Tensor:
        kwargs = {}
        if logits_at is not None:
            if logits_at.ndim != 2 or logits_at.shape[0] != input_ids.shape[0]:
                raise SelectionError(f"logits_at must be [batch, k] = [{input_ids.shape[0]}, k] positions, "
                                     f"got shape {tuple(logits_at.shape)}")
            kwargs["logits_to_keep"] = logits_at.to(input_ids.device)
        if attention_mask is not None and not bool(attention_mask.all()):
            kwargs["attention_mask"] = attention_mask
            kwargs["position_ids"] = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        with self._runtime.forward_batch(input_ids.shape[0]), running_with_mask(attention_mask):
            logits = self.hf(input_ids=input_ids, use_cache=False, **kwargs).logits
            if "logits" in self._runtime.entries:
                logits = self._runtime.fire("logits", logits)
        return logits

    def run_from(self, layer: int, resid_pre: torch.Tensor, tokens: TokensLike,
                 attention_mask: torch.Tensor | None = None, *, logits_at: torch.Tensor | None = None
                 ) -> torch.Tensor:
        """Logits from blocks ``layer ..`` run on ``resid_pre`` `[batch, pos, d_model]`; the blocks
        before ``layer`` are skipped (their hooks do not fire).

        tokens `[batch, pos]` (and ``attention_mask``) give the run its positions and masks,
        as in ``model(tokens)``; with ``resid_pre`` recorded as ``blocks.{layer}.resid_pre``
        of ``model(tokens)`` the result equals that forward. logits_at: `[batch, k]`
        positions to compute logits at (default all): returns `[batch, k, d_vocab]`.
        """
        input_ids, attention_mask = self.prepare_inputs(tokens, attention_mask)
        with starting_at(self, layer, resid_pre.to(self.device)):
            return self._logits(input_ids, attention_mask, logits_at)

    def prepare_inputs(self, tokens: TokensLike, attention_mask: torch.Tensor | None = None, *,
                       prepend_bos: bool | None = None, padding_side: str | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(input_ids [batch, pos], attention_mask [batch, pos] or None)`` on the model's device,
        from ids (`[pos]` or `[batch, pos]`) or text (tokenized and padded).

        Checks: integer ids in ``[0, d_vocab)`` (`TokenIdError`), at least one prompt and one
        token in each (`SelectionError`: ``model("")`` has nothing to run on), matching mask
        shape; inputs longer than ``cfg.n_ctx`` give a `ContextLengthWarning` (rotary positions)
        or a `SelectionError` (learned position embeddings, which end there).
        """
        if isinstance(tokens, str) or (isinstance(tokens, Sequence) and not isinstance(tokens, torch.Tensor)):
            if attention_mask is not None:
                raise SelectionError("pass attention_mask only with token ids, not with text")
            if not isinstance(tokens, str) and not all(isinstance(t, str) for t in tokens):
                raise ArgumentTypeError("tokens must be a LongTensor of ids, a text or a list of texts; got a "
                                        "list holding " + ", ".join(sorted({type(t).__name__ for t in tokens})) +
                                        " (wrap ids in torch.tensor)")
            tokens, attention_mask = self.to_tokens(tokens, prepend_bos=prepend_bos, padding_side=padding_side,
                                                    return_mask=True)
        if not isinstance(tokens, torch.Tensor):
            raise ArgumentTypeError(f"tokens must be a LongTensor or text, got {type(tokens).__name__}")
        if tokens.dtype.is_floating_point or tokens.dtype.is_complex or tokens.dtype == torch.bool:
            raise ArgumentTypeError(f"token ids must be an integer tensor, got dtype {tokens.dtype}")
        if tokens.ndim == 1:
            tokens = tokens[None]
            attention_mask = None if attention_mask is None else attention_mask.reshape(1, -1)
        if tokens.ndim != 2:
            raise SelectionError(f"tokens must be [batch, pos], got shape {tuple(tokens.shape)}")
        if attention_mask is not None and attention_mask.shape != tokens.shape:
            raise SelectionError(
                f"attention_mask shape {tuple(attention_mask.shape)} differs from tokens {tuple(tokens.shape)}"
            )
        self._check_tokens(tokens, attention_mask)
        device = self.device
        return tokens.to(device), None if attention_mask is None else attention_mask.to(device)

    def _check_tokens(self, tokens: torch.Tensor, attention_mask: torch.Tensor | None) -> None:
        """Non-empty ids `[batch, pos]` inside the vocabulary; a warning past the context length."""
        batch, length = tokens.shape
        if batch == 0 or length == 0:
            raise SelectionError(f"the input has no tokens (shape [{batch}, {length}]): an empty text or "
                                 "tensor has nothing to run on; give at least one token per prompt")
        if attention_mask is not None:
            empty = (attention_mask.sum(-1) == 0).nonzero()[:, 0].tolist()
            if empty:
                raise SelectionError(f"prompt(s) {empty} have no tokens (their attention mask is all 0)")
        check_token_ids(tokens, self.cfg.d_vocab, "the model's vocabulary (d_vocab)")
        n_ctx = self.cfg.n_ctx
        if n_ctx and length > n_ctx and self.cfg.positional == "learned":
            raise SelectionError(f"the input has {length} tokens, but the model has learned position embeddings "
                                 f"for {n_ctx} positions only (cfg.n_ctx)")
        if n_ctx and length > n_ctx:
            warnings.warn(f"the input has {length} tokens, more than the model's context length of {n_ctx} "
                          "(cfg.n_ctx); results past it are outside what the model was trained on",
                          ContextLengthWarning, stacklevel=4)

    # ------------------------------------------------------------------ hooks
    def _entries(self, spec: HookSpec | None, backward: bool) -> list[Entry]:
        if spec is None:
            return []
        entries = []
        for key, fn in _hook_items(spec):
            if not callable(fn):
                raise ArgumentTypeError(f"the hook for {key!r} is not callable (got {type(fn).__name__})")
            names, heads, positions = self._hook_key(key)
            entries += [Entry(self._runtime.points[name], fn, heads, positions, backward) for name in names]
        return entries

    def _hook_key(self, key: HookKey) -> tuple[list[str], Heads, Positions]:
        """``(names, heads, positions)`` a hook key selects; the key kinds `hooks` accepts, or an error."""
        if isinstance(key, Target):
            return select_names(key.name, self.names), key.heads, key.positions
        if isinstance(key, str):
            return select_names(key, self.names), None, None
        if callable(key):  # TransformerLens's filter: fn(name) -> bool
            names = select_names(key, self.names)
            if not names:
                raise SelectionError(f"the name predicate {key!r} of a hook matches no hook point")
            return names, None, None
        raise ArgumentTypeError(f"a hook key must be an activation name or glob (str), an ms.at(...) target "
                                f"or a predicate fn(name) -> bool; got {type(key).__name__} {key!r}")

    @contextmanager
    def frozen(self) -> Iterator[HookedModel]:
        """Parameters without gradients for the ``with`` block (restored after): backward passes
        then compute activation gradients only, faster, and never touch ``param.grad``. Models
        from `mechscope.load` are frozen already; this covers wrapped models that are not."""
        trainable = [p for p in self.hf.parameters() if p.requires_grad]
        for param in trainable:
            param.requires_grad_(False)
        try:
            yield self
        finally:
            for param in trainable:
                param.requires_grad_(True)

    def mlp_input_name(self, layer: int) -> str:
        """The activation the MLP of ``layer`` computes from, normalised where the model
        normalises it: ``blocks.{layer}.ln2.out``; ``ln1.out`` where the MLP shares the
        attention's pre-norm (GPT-J); ``mlp.in`` (the residual) where it has no pre-norm
        (OLMo 2). What a transcoder imitating that MLP should read."""
        parts = self.adapter.components
        suffix = "ln2.out" if parts.ln2 is not None else "ln1.out" if parts.ln1 is not None else "mlp.in"
        return self.hook_point(f"blocks.{layer}.{suffix}").name

    def linearized_at(self, tokens: TokensLike, *, attention: bool = True, norms: bool = True,
                      attention_mask: torch.Tensor | None = None):
        """A context in which the model is frozen at ``tokens`` `[b, p]` (one forward of them is
        recorded on entry): attention patterns (``attention``) and every residual-stream norm's
        scale (``norms``: ln1, ln2, sandwich norms, the final norm) keep their recorded values, so
        the forward is linear in the residual stream wherever MLPs are held fixed, and
        gradients follow only that linear path. A forward of the recorded tokens is unchanged;
        a 1-prompt recording also serves a batch of copies of it. See `models.linearized`."""
        return linearized_at(self, tokens, attention=attention, norms=norms, attention_mask=attention_mask)

    @contextmanager
    def hooks(self, forward: HookSpec | None = None, *, backward: HookSpec | None = None) -> Iterator[HookedModel]:
        """Activate hooks for the duration of the ``with`` block.

        Keys are names, globs (``"blocks.*.attn.z"``), `at(...)` targets or predicates
        ``fn(name) -> bool`` (TransformerLens's filters); values are ``fn(tensor, ctx) -> tensor | None``.
        Both may also be given as a list of ``(key, fn)`` pairs. A forward hook receives the activation in its
        canonical layout and returns a replacement of the same shape, or None to keep it
        (in-place edits of the received tensor also take effect). A backward hook receives
        the gradient with respect to the activation and may return a replacement. Hooks run
        in registration order and are removed on exit, also when an exception is raised.
        """
        entries = self._entries(forward, False) + self._entries(backward, True)
        try:
            self._runtime.add(entries)
            yield self
        finally:
            self._runtime.remove(entries)

    @contextmanager
    def attach(self, *extensions: Extension) -> Iterator[HookedModel]:
        """Attach extensions (see `mechscope.models.extension`) for the duration of the block:
        their hook points join ``model.names`` and their hooks run in every forward. Detached
        on exit, also when an exception is raised."""
        runtime = self._runtime
        with ExitStack() as stack:
            for ext in extensions:
                if not isinstance(ext, Extension):
                    raise TypeError(f"{type(ext).__name__} is not an extension: it needs hook_points(model) "
                                    "and hooks(model, fire) methods")
                points = runtime.add_points(ext.hook_points(self))
                stack.callback(runtime.remove_points, points)
                stack.enter_context(self.hooks(ext.hooks(self, runtime.fire)))
            yield self

    def saes(self, *saes, keep_error: bool = False, skip_first: bool = False,
             outlier_ratio: float | None = None):
        """``model.attach`` for SAEs / transcoders (`mechscope.SAE`): splices each into every
        forward inside the ``with`` block and adds ``<name>.sae.input``, ``.sae.latents``
        `[b, p, d_sae]`, ``.sae.recon`` (and ``.sae.error`` with ``keep_error=True``: the forward
        is then unchanged until a hook edits the latents). skip_first leaves position 0
        unreplaced; outlier_ratio also the tokens whose norm is over that many times the
        batch's median (attention sinks the SAE was not trained on)."""
        return self.attach(*(sae.spliced(keep_error=keep_error, skip_first=skip_first, outlier_ratio=outlier_ratio)
                             for sae in saes))

    def run_with_hooks(self, tokens: TokensLike, forward: HookSpec | None = None, *,
                       backward: HookSpec | None = None, fwd_hooks: HookSpec | None = None,
                       bwd_hooks: HookSpec | None = None, reset_hooks_end: bool = True, **kwargs) -> torch.Tensor:
        """``model(tokens)`` with hooks active; returns logits `[batch, pos, d_vocab]` (or what
        ``return_type`` asks for). ``fwd_hooks`` / ``bwd_hooks`` are TransformerLens's names for
        ``forward`` / ``backward`` (lists of ``(name, fn)`` pairs); hooks are always removed at the end."""
        forward = _alias(forward, fwd_hooks, "forward", "fwd_hooks")
        backward = _alias(backward, bwd_hooks, "backward", "bwd_hooks")
        if not reset_hooks_end:
            raise UnsupportedArgumentError("reset_hooks_end=False: run_with_hooks always removes its hooks; keep "
                                           "hooks active over several calls with `with model.hooks(...):`")
        with self.hooks(forward, backward=backward):
            return self(tokens, **kwargs)

    def reset_hooks(self) -> None:
        """Remove every active hook (those of open ``hooks`` blocks too)."""
        self._runtime.clear()

    # ------------------------------------------------------------------ caching
    def run_with_cache(
        self,
        tokens: TokensLike,
        names: NameSpec = None,
        *,
        positions: Positions = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        grad_metric: Callable[[torch.Tensor], torch.Tensor] | None = None,
        attention_mask: torch.Tensor | None = None,
        stop_early: bool = False,
        prepend_bos: bool | None = None,
        padding_side: str | None = None,
        logits_at: torch.Tensor | None = None,
        return_type: str | None = "logits",
        names_filter: NameSpec = None,
        remove_batch_dim: bool = False,
        **unsupported,
    ) -> tuple[torch.Tensor | None, ActivationCache]:
        """Run the model and record activations.

        names: an exact name, glob, list of those, predicate, or None for every name (but the
          split inputs ``attn.q_input``/``k_input``/``v_input`` and ``mlp.in``, per-reader copies
          of a residual: name them to cache them)
          (``names_filter`` is TransformerLens's name for it).
        positions: keep only these positions (see `selection`; ``"last"``: each prompt's last
          real token); the pos axis of ``attn.scores``/``attn.pattern`` is the query axis.
        device, dtype: where and how to store the cached tensors.
        grad_metric: ``fn(logits) -> scalar``; if given, backpropagates it and stores the
          gradient at every cached name in ``cache.grads`` (grad mode is enabled for it).
        Without ``grad_metric`` the run is under ``torch.no_grad()``.
        stop_early: end the forward after the deepest block the names need (harvesting): the
          logits are then None (when every name is in a block or the embeddings).
        remove_batch_dim: (TransformerLens) for one prompt, store entries without the batch axis.
        prepend_bos, padding_side, logits_at, return_type: as in `forward`.
        Returns ``(logits, cache)``; logits are detached.
        """
        _reject_unsupported("run_with_cache", unsupported)
        names = _alias(names, names_filter, "names", "names_filter")
        if isinstance(names, Target):
            raise ArgumentTypeError(f"run_with_cache takes names, not an ms.at(...) target; for its selection pass "
                                    f"names={names.name!r}, positions={names.positions!r} (and index the heads "
                                    "of the cached tensor)")
        chosen = select_names(names, self.names) if names is not None else [
            n for n in self.names if not self._runtime.points[n].copies_residual]  # split inputs: only by name
        check_selection(None, positions)
        if stop_early and grad_metric is not None:
            raise MechscopeError("stop_early and grad_metric exclude each other: a metric needs the logits")
        input_ids, attention_mask = self.prepare_inputs(tokens, attention_mask, prepend_bos=prepend_bos,
                                                       padding_side=padding_side)
        if remove_batch_dim and input_ids.shape[0] != 1:
            raise SelectionError(f"remove_batch_dim=True needs one prompt, got a batch of {input_ids.shape[0]}")
        stop_layer = last_block_needed(self.hook_points(chosen), self.names) if stop_early else None
        acts: dict[str, torch.Tensor] = {}
        grads: dict[str, torch.Tensor] = {}

        def keep(store: dict[str, torch.Tensor]) -> HookFn:
            return recorder(store, positions=positions, device=device, dtype=dtype)

        forward = [(name, keep(acts)) for name in chosen]
        backward = [(name, keep(grads)) for name in chosen] if grad_metric is not None else None
        logits = None  # stays None when stop_early cuts the forward off
        with self.hooks(forward, backward=backward):
            if grad_metric is None:
                with torch.no_grad(), stopping_after(self, stop_layer):
                    logits = self._run(input_ids, attention_mask, logits_at, return_type)
            else:
                with torch.enable_grad():
                    logits = self._run(input_ids, attention_mask, logits_at, return_type)
                    metric = checked_loss(grad_metric(logits), "grad_metric (fn(logits) -> scalar)")
                    with running_with_mask(attention_mask):  # positions="last" in the backward recorders
                        metric.backward()
        logits = None if logits is None else logits.detach()
        if remove_batch_dim:
            acts, grads = ({k: v[0] for k, v in store.items()} for store in (acts, grads))
        return logits, ActivationCache(acts, self.names, grads if grad_metric is not None else None)

    def unembed(self, resid: torch.Tensor) -> torch.Tensor:
        """The model's own final norm, unembedding and final softcap: `[..., d_model]` -> `[..., d_vocab]`.

        Applied to ``blocks.{l}.resid_post`` this is the logit lens; applied to the last
        layer it reproduces the logits exactly.
        """
        logits = self.hf.get_submodule(self.adapter.components.unembed)(self.final_norm(resid))
        attr = self.adapter.final_softcap_attr
        cap = getattr(self.hf.config, attr, None) if attr else None
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits

    def final_norm(self, resid: torch.Tensor) -> torch.Tensor:
        """The model's own final norm module applied to ``resid`` `[..., d_model]`."""
        return self.hf.get_submodule(self.adapter.components.ln_final)(resid)

    def final_norm_at(self, resid: torch.Tensor) -> FrozenNorm:
        """The final norm linearised at ``resid`` `[..., d_model]` (its scale frozen there):
        ``.apply(part)`` maps parts of ``resid`` to their additive shares of
        ``final_norm(resid) - .bias`` (`FrozenNorm`)."""
        return FrozenNorm(self.hf.get_submodule(self.adapter.components.ln_final), self.adapter.norm, resid)

    def embed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """The input embedding of token ids `[...]` as the model applies it (times the embedding
        scale of models that scale embeddings, sqrt(d_model) in Gemma): `[..., d_model]`."""
        return self.hf.get_input_embeddings()(tokens.to(self.device))

    # ------------------------------------------------------------------ weights
    def weights(self, *, fold_norm: bool = False, expand_kv: bool = False) -> Weights:
        """Weight views; ``fold_norm`` folds the preceding norm in, ``expand_kv`` repeats GQA k/v heads."""
        return Weights(self, fold_norm=fold_norm, expand_kv=expand_kv)

    W_E = property(lambda self: self.weights().W_E, doc="`[d_vocab, d_model]`")
    W_pos = property(lambda self: self.weights().W_pos, doc="`[n_ctx, d_model]` or None")
    W_U = property(lambda self: self.weights().W_U, doc="`[d_model, d_vocab]`")
    b_U = property(lambda self: self.weights().b_U, doc="`[d_vocab]`")

    def __getattr__(self, name: str):
        # Per-layer weight views (W_Q, W_K, W_V, W_O, b_*, W_in, W_gate, W_out) are served by Weights.
        if name in _LAYER_WEIGHTS:
            return getattr(self.weights(), name)
        return super().__getattr__(name)

    # ------------------------------------------------------------------ tokens
    def _require_tokenizer(self):
        if self.tokenizer is None:
            raise MechscopeError("this model has no tokenizer; pass one to mechscope.load(model, tokenizer=...)")
        return self.tokenizer

    def to_tokens(self, text: str | Sequence[str], *, prepend_bos: bool | None = None,
                  padding_side: str | None = None, return_mask: bool = False):
        """Token ids `[batch, pos]` for one text or a list of texts (padded to the longest).

        prepend_bos: add the tokenizer's BOS token; default ``cfg.default_prepend_bos``
          (what the tokenizer does by itself).
        padding_side: "right" (default) or "left".
        return_mask: also return the attention mask `[batch, pos]` (1 = real token).
        """
        tok = self._require_tokenizer()
        texts = [text] if isinstance(text, str) else list(text)
        if not texts:
            raise SelectionError("to_tokens got an empty list of texts")
        bos = self.cfg.default_prepend_bos if prepend_bos is None else prepend_bos
        if bos and tok.bos_token_id is None:
            raise MechscopeError("prepend_bos=True but the tokenizer has no BOS token")
        ids = [([tok.bos_token_id] if bos else []) + list(row) for row in
               tok(texts, add_special_tokens=False)["input_ids"]]
        side = padding_side or "right"
        if side not in ("left", "right"):
            raise SelectionError(f"padding_side must be 'left' or 'right', got {side!r}")
        width = max(len(row) for row in ids)
        pad = _pad_id(tok)
        tokens = torch.full((len(ids), width), pad, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for i, row in enumerate(ids):
            span = slice(0, len(row)) if side == "right" else slice(width - len(row), width)
            tokens[i, span] = torch.tensor(row, dtype=torch.long)
            mask[i, span] = 1
        return (tokens, mask) if return_mask else tokens

    def to_string(self, tokens: torch.Tensor | Sequence[int]) -> str | list[str]:
        """Decode `[pos]` to a string or `[batch, pos]` to a list of strings; ids outside the
        tokenizer's vocabulary raise `TokenIdError`."""
        tok = self._require_tokenizer()
        tokens = _id_tensor(tokens)
        check_token_ids(tokens, len(tok), "the tokenizer's vocabulary")
        if tokens.ndim == 2:
            return tok.batch_decode(tokens.tolist())
        return tok.decode(tokens.tolist())

    def to_str_tokens(self, text_or_tokens: str | torch.Tensor | Sequence[int], *,
                      prepend_bos: bool | None = None) -> list[str]:
        """Each token decoded on its own (``[" Mary", " and", ...]``) for one prompt; a token that
        is only part of a UTF-8 character shows as its bytes (``"\\xe2\\x80"``), see `token_texts`.
        For display labels with whitespace made visible use `mechscope.models.tokens.token_labels`."""
        tok = self._require_tokenizer()
        if isinstance(text_or_tokens, str):
            ids = self.to_tokens(text_or_tokens, prepend_bos=prepend_bos)[0]
        else:
            ids = _id_tensor(text_or_tokens)
            if ids.ndim == 2:
                if ids.shape[0] != 1:
                    raise SelectionError("to_str_tokens takes one prompt; got a batch")
                ids = ids[0]
            if ids.ndim != 1:
                raise SelectionError(f"to_str_tokens takes ids [pos] or [1, pos], got shape {tuple(ids.shape)}")
        check_token_ids(ids, len(tok), "the tokenizer's vocabulary")
        return token_texts(tok, ids.tolist())

    def to_single_token(self, text: str) -> int:
        """The id of ``text`` if it is exactly one token, else a clear error."""
        return require_single_token(self._require_tokenizer(), text)

    # ------------------------------------------------------------------ generation
    def generate(self, prompt: TokensLike, max_new_tokens: int = 20, *, do_sample: bool = False,
                 temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                 prepend_bos: bool | None = None, return_tokens: bool = False, **generate_kwargs):
        """Continue ``prompt`` (text, list of texts or ids); hooks active around the call apply
        at every step (including ``logits`` hooks, on each step's next-token logits).

        Returns the full text(s) (prompt + continuation), or ids `[batch, pos + new]` with
        ``return_tokens``. Batched text prompts are left-padded.
        """
        ids, mask = self.prepare_inputs(prompt, prepend_bos=prepend_bos, padding_side="left")
        options = {"max_new_tokens": max_new_tokens, "do_sample": do_sample}
        if do_sample:
            options.update(temperature=temperature, top_k=top_k, top_p=top_p)
        else:
            options.update(temperature=None, top_k=None, top_p=None)
        processors = LogitsProcessorList([_LogitsHook(self._runtime)]) if "logits" in self._runtime.entries else None
        pad = _pad_id(self.tokenizer) if self.tokenizer is not None else 0
        # Left padding: positions="last" (the last index of each step) is each prompt's last token.
        with torch.no_grad(), self._runtime.forward_batch(ids.shape[0]), running_with_mask(None):
            out = self.hf.generate(input_ids=ids, attention_mask=mask, pad_token_id=pad,
                                   logits_processor=processors, **options, **generate_kwargs)
        if return_tokens or self.tokenizer is None:
            return out
        texts = self.tokenizer.batch_decode(out, skip_special_tokens=True)
        return texts[0] if isinstance(prompt, str) else texts

    def __repr__(self) -> str:
        c = self.cfg
        return (f"HookedModel({c.family}: {c.n_layers} layers, d_model {c.d_model}, {c.n_heads} heads "
                f"({c.n_kv_heads} kv), d_mlp {c.d_mlp}, vocab {c.d_vocab}; {len(self.names)} hook points)")


_LAYER_WEIGHTS = frozenset(
    {"W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V", "b_O", "W_in", "b_in", "W_gate", "b_gate", "W_out", "b_out"}
)


_RETURN_TYPES = ("logits", "loss", None)

# TransformerLens keyword arguments mechscope does not take, with what to write instead.
_TRANSFORMERLENS_EQUIVALENTS = {
    "incl_bwd": "pass grad_metric=fn(logits) -> scalar; the gradients are in cache.grads",
    "return_cache_object": "the cache is always an ActivationCache",
    "stop_at_layer": "run_with_cache(..., stop_early=True) stops after the deepest block the names need",
    "start_at_layer": "model.run_from(layer, resid_pre, tokens)",
    "loss_per_token": "compute it from the logits: return_type='logits'",
    "clear_contexts": "hooks keep no context; state lives in your own closures",
    "pos_slice": "positions=... (an int, list, slice, mask, ms.PerPrompt or 'last')",
    "input": "pass the tokens as the first positional argument",
}


def _reject_unsupported(method: str, kwargs: dict) -> None:
    """Raise `UnsupportedArgumentError` for keyword arguments ``method`` does not take, giving
    the mechscope equivalent of TransformerLens ones."""
    if not kwargs:
        return
    name = next(iter(kwargs))
    equivalent = _TRANSFORMERLENS_EQUIVALENTS.get(name)
    hint = (f" (a TransformerLens one); in mechscope: {equivalent}" if equivalent
            else "; for TransformerLens arguments see docs/from-transformerlens.md")
    raise UnsupportedArgumentError(f"HookedModel.{method}() takes no argument {name!r}{hint}")


def _alias(value, alias, name: str, alias_name: str):
    """``value``, or ``alias`` (a TransformerLens name for the same argument) when only it is given."""
    if alias is None:
        return value
    if value is not None:
        raise SelectionError(f"give {name}= or {alias_name}= (its TransformerLens name), not both")
    return alias


def _hook_items(spec: HookSpec) -> list[tuple[HookKey, HookFn]]:
    """The ``(key, fn)`` pairs of a hooks dict or list of pairs."""
    if isinstance(spec, Mapping):
        return list(spec.items())
    if isinstance(spec, Sequence) and not isinstance(spec, str) and all(
            isinstance(item, Sequence) and not isinstance(item, str) and len(item) == 2 for item in spec):
        return [tuple(item) for item in spec]
    raise ArgumentTypeError(f"hooks must be a dict {{name: fn}} or a list of (name, fn) pairs, got "
                            f"{type(spec).__name__} {spec!r}")


def _next_token_loss(logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None
                     ) -> torch.Tensor:
    """Mean cross-entropy of each next token (scalar) from logits `[batch, pos, d_vocab]` and ids
    `[batch, pos]`, over the pairs of real tokens (padding left out)."""
    if input_ids.shape[1] < 2:
        raise SelectionError("return_type='loss' needs at least 2 tokens per prompt (a token and its successor)")
    nll = next_token_losses(logits, input_ids)  # [batch, pos - 1]
    if attention_mask is None:
        return nll.mean()
    real = (attention_mask[:, 1:].bool() & attention_mask[:, :-1].bool()).to(nll.dtype)
    return (nll * real).sum() / real.sum().clamp(min=1)


def _id_tensor(tokens: torch.Tensor | Sequence[int]) -> torch.Tensor:
    """Token ids as an integer tensor; floats and bools raise `ArgumentTypeError`."""
    if not isinstance(tokens, torch.Tensor):
        empty = isinstance(tokens, Sequence) and not len(tokens)
        tokens = torch.zeros(0, dtype=torch.long) if empty else torch.as_tensor(tokens)
    if tokens.dtype.is_floating_point or tokens.dtype.is_complex or tokens.dtype == torch.bool:
        raise ArgumentTypeError(f"token ids must be integers, got dtype {tokens.dtype}")
    return tokens


def _pad_id(tokenizer) -> int:
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if candidate is not None:
            return candidate
    return 0


def _tokenizer_adds_bos(tokenizer) -> bool:
    if tokenizer is None or tokenizer.bos_token_id is None:
        return False
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bool(ids) and ids[0] == tokenizer.bos_token_id


__all__ = ["HookedModel", "LayerWeights", "Target", "at"]
