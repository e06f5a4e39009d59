"""A set of per-layer transcoders for one model: layer -> transcoder (`mechscope.SAE` with
``d_out``), each reading what its layer's MLP reads (`HookedModel.mlp_input_name`: the
normalised MLP input, ``ln2.out`` in most families) and writing ``blocks.{l}.mlp.out``.

    transcoders = TranscoderSet.fresh(model, d_sae=1536, k=32)      # random, to train
    transcoders = TranscoderSet([sae_0, sae_1, ...])                 # trained ones, layer order
    transcoders.check(model)                                         # every layer, names, widths

Why the normalised input rather than ``resid_mid``: it is exactly what the MLP computes from,
so a transcoder imitates a function of its real input and does not have to learn the norm;
in the frozen model of an attribution graph the norm's scale is fixed, so either side is
linear in the residual stream.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

from ..errors import SelectionError
from ..sae.modules import SAE, SAEConfig
from ..sae.splice import check_sae_names, check_width
from ..sae.train import init_sae

if TYPE_CHECKING:
    from ..models.hooked import HookedModel


class TranscoderSet:
    """Per-layer transcoders, ``transcoders[layer]`` -> `SAE`. Built from a sequence (layer i
    at index i) or a mapping layer -> transcoder."""

    def __init__(self, transcoders: Sequence[SAE] | Mapping[int, SAE]):
        items = dict(transcoders) if isinstance(transcoders, Mapping) else dict(enumerate(transcoders))
        if not items:
            raise SelectionError("a TranscoderSet needs at least one transcoder")
        for layer, sae in items.items():
            if not isinstance(sae, SAE) or not sae.cfg.is_transcoder:
                raise SelectionError(f"layer {layer}: a TranscoderSet holds transcoders (ms.SAE with d_out set), "
                                     f"got {type(sae).__name__}{'' if not isinstance(sae, SAE) else ' without d_out'}")
            check_sae_names(sae.cfg)
            if sae.cfg.output_hook_name != f"blocks.{layer}.mlp.out":
                raise SelectionError(f"the transcoder of layer {layer} writes {sae.cfg.output_hook_name!r}; an "
                                     f"attribution graph replaces MLPs, so it must write 'blocks.{layer}.mlp.out'")
        self._by_layer = dict(sorted(items.items()))

    @classmethod
    def fresh(cls, model: HookedModel, d_sae: int, *, architecture: str = "topk", k: int | None = 32,
              skip_connection: bool = False, layers: Sequence[int] | None = None, seed: int = 0,
              model_name: str = "") -> TranscoderSet:
        """Randomly initialised transcoders (`sae.train.init_sae`) for ``layers`` (default all),
        each reading `HookedModel.mlp_input_name` and writing ``mlp.out``: a start for training."""
        chosen = range(model.cfg.n_layers) if layers is None else layers
        built = {}
        for layer in chosen:
            cfg = SAEConfig(d_in=model.hook_point(model.mlp_input_name(layer)).width, d_sae=d_sae,
                            architecture=architecture, k=k if architecture in ("topk", "batchtopk") else None,
                            d_out=model.cfg.d_model, skip_connection=skip_connection,
                            hook_name=model.mlp_input_name(layer), output_hook_name=f"blocks.{layer}.mlp.out",
                            model_name=model_name)
            built[layer] = init_sae(SAE(cfg), seed + layer)
        return cls(built)

    @property
    def layers(self) -> list[int]:
        return list(self._by_layer)

    def __getitem__(self, layer: int) -> SAE:
        if layer not in self._by_layer:
            raise SelectionError(f"no transcoder for layer {layer}; this set covers layers {self.layers}")
        return self._by_layer[layer]

    def __iter__(self) -> Iterator[SAE]:
        return iter(self._by_layer.values())

    def __len__(self) -> int:
        return len(self._by_layer)

    def items(self) -> Iterator[tuple[int, SAE]]:
        return iter(self._by_layer.items())

    def check(self, model: HookedModel, *, every_layer: bool = True) -> TranscoderSet:
        """``self``, or a `SelectionError` when a layer of ``model`` has no transcoder
        (``every_layer``), or a transcoder's names or widths do not fit ``model``."""
        missing = sorted(set(range(model.cfg.n_layers)) - set(self._by_layer))
        if every_layer and missing:
            raise SelectionError(f"layers {missing} of the model have no transcoder: an attribution graph replaces "
                                 "every MLP (train the missing ones, e.g. TranscoderSet.fresh(..., layers=...))")
        for layer, sae in self.items():
            if layer >= model.cfg.n_layers:
                raise SelectionError(f"a transcoder for layer {layer}, but the model has {model.cfg.n_layers} layers")
            source = model.hook_point(sae.cfg.hook_name)
            if source.layer != layer:
                raise SelectionError(f"the transcoder of layer {layer} reads {sae.cfg.hook_name!r}, of layer "
                                     f"{source.layer}: a replacement MLP reads its own layer")
            check_width(source, sae.cfg.d_in, "reads d_in")
            check_width(model.hook_point(sae.cfg.output_hook_name), sae.cfg.d_output, "writes d_out")
        return self
