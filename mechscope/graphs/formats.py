"""Transcoder sets on disk, in circuit-tracer's layout or SAELens's, so either tool can read
mechscope's transcoders and mechscope can read theirs.

    save_transcoders(transcoders, "tc/")                       # circuit-tracer: config.yaml + layer_{l}.safetensors
    save_transcoders(transcoders, "tc-saelens/", layout="saelens")   # layer_{l}/ SAELens folders
    transcoders = load_transcoders("tc/")                      # either layout, detected

circuit-tracer's layout (``load_transcoder_set``): ``config.yaml`` with ``model_kind:
transcoder_set``, ``feature_input_hook`` / ``feature_output_hook`` (TransformerLens hook names
without ``blocks.{l}.``), ``activation`` (``topk`` with ``k``, or ``relu``; absent for JumpReLU,
whose ``activation_function.threshold`` is in each file), optionally ``transcoders`` (one path
per layer; default ``layer_{l}.safetensors``). Each file holds ``W_enc`` `[d_sae, d_in]`,
``W_dec`` `[d_sae, d_out]`, ``b_enc``, ``b_dec`` and optionally ``W_skip`` `[d_out, d_in]`
(applied as ``x @ W_skip.T``): mechscope stores ``W_enc`` and ``W_skip`` transposed. Its TopK
keeps the k largest pre-activations even when negative, mechscope's the k largest of
``relu(pre)``: the two agree wherever a token has k positive pre-activations (trained
transcoders almost always do). A ``mechscope`` section in the config records mechscope's own
names and architecture, so a round trip is exact.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file, save_file

from ..errors import MechscopeError, OutputPathError, SelectionError
from ..sae.formats import load_sae, save_saelens
from ..sae.modules import SAE, SAEConfig
from .transcoders import TranscoderSet

LAYOUTS = ("circuit-tracer", "saelens")
# mechscope block activation -> TransformerLens hook name (as circuit-tracer's configs give them)
TL_NAMES = {"ln2.out": "ln2.hook_normalized", "ln1.out": "ln1.hook_normalized", "resid_mid": "hook_resid_mid",
            "mlp.in": "hook_mlp_in", "resid_pre": "hook_resid_pre", "mlp.out": "hook_mlp_out"}
FROM_TL = {**{tl: ours for ours, tl in TL_NAMES.items()}, "mlp.hook_in": "ln2.out", "mlp.hook_out": "mlp.out"}
_ACTIVATIONS = {"topk": "topk", "relu": "relu"}  # circuit-tracer's `activation`; JumpReLU has none


def save_transcoders(transcoders: TranscoderSet, path: str | os.PathLike, *, layout: str = "circuit-tracer",
                     model_name: str = "") -> Path:
    """Write ``transcoders`` to the folder ``path`` in ``layout`` ("circuit-tracer" or
    "saelens", see the module docstring); returns the folder."""
    if layout not in LAYOUTS:
        raise SelectionError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise OutputPathError(f"cannot save transcoders to {str(folder)!r}: it is a file; give a folder")
    folder.mkdir(parents=True, exist_ok=True)
    if layout == "saelens":
        for layer, tc in transcoders.items():
            save_saelens(tc, folder / f"layer_{layer}")
        return folder
    first = transcoders[transcoders.layers[0]].cfg
    config = {"model_name": model_name or first.model_name, "model_kind": "transcoder_set",
              "feature_input_hook": _tl_name(first.hook_name), "feature_output_hook": _tl_name(first.output_hook_name),
              "transcoders": [f"layer_{layer}.safetensors" for layer in transcoders.layers],
              "mechscope": {str(layer): tc.cfg.to_dict() for layer, tc in transcoders.items()}}
    if first.architecture in _ACTIVATIONS:
        config["activation"] = _ACTIVATIONS[first.architecture]
        if first.k is not None:
            config["k"] = first.k
    for layer, tc in transcoders.items():
        if tc.cfg.architecture != first.architecture or tc.cfg.k != first.k:
            raise SelectionError("circuit-tracer's config holds one activation for all layers: layer "
                                 f"{layer} is {tc.cfg.architecture} (k={tc.cfg.k}), layer {transcoders.layers[0]} "
                                 f"{first.architecture} (k={first.k}); use layout='saelens'")
        tensors = {"W_enc": tc.W_enc.detach().T, "W_dec": tc.W_dec.detach(), "b_enc": tc.b_enc.detach(),
                   "b_dec": tc.b_dec.detach()}
        if tc.cfg.arch.trains_threshold or first.architecture not in _ACTIVATIONS:
            tensors["activation_function.threshold"] = tc.threshold.detach()
        if tc.W_skip is not None:
            tensors["W_skip"] = tc.W_skip.detach().T
        save_file({k: v.float().contiguous().cpu() for k, v in tensors.items()}, str(folder / f"layer_{layer}.safetensors"))
    (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return folder


def load_transcoders(path: str | os.PathLike) -> TranscoderSet:
    """A transcoder set saved by `save_transcoders` (either layout) or by circuit-tracer's
    tools (a local folder with ``config.yaml``)."""
    folder = Path(path)
    if (folder / "config.yaml").is_file():
        return _load_circuit_tracer(folder)
    layers = sorted((p for p in folder.glob("layer_*") if p.is_dir()), key=lambda p: int(p.name.split("_")[1]))
    if not layers:
        raise MechscopeError(f"{folder} holds no transcoder set: neither a circuit-tracer config.yaml nor "
                             "SAELens layer_<l>/ folders")
    return TranscoderSet({int(p.name.split("_")[1]): load_sae(p) for p in layers})


def _tl_name(name: str) -> str:
    suffix = name.split(".", 2)[2] if name.startswith("blocks.") else name
    if suffix not in TL_NAMES:
        raise SelectionError(f"circuit-tracer has no hook for {name!r}; it reads one of "
                             f"{', '.join('blocks.<l>.' + k for k in TL_NAMES)}")
    return TL_NAMES[suffix]


def _load_circuit_tracer(folder: Path) -> TranscoderSet:
    config = yaml.safe_load((folder / "config.yaml").read_text())
    if not isinstance(config, dict) or config.get("model_kind") != "transcoder_set":
        raise MechscopeError(f"{folder / 'config.yaml'} is not a circuit-tracer transcoder set (model_kind "
                             f"{config.get('model_kind') if isinstance(config, dict) else None!r}; only "
                             "'transcoder_set' is read)")
    ours = config.get("mechscope") or {}
    files = config.get("transcoders") or sorted((p.name for p in folder.glob("layer_*.safetensors")),
                                                key=lambda n: int(n.split("_")[1].split(".")[0]))
    built = {}
    for layer, name in enumerate(files):
        file = Path(name) if Path(name).is_absolute() else folder / name
        if str(name).startswith("hf://") or not file.is_file():
            raise MechscopeError(f"transcoder file {name} of layer {layer} is not in {folder} (download it first)")
        tensors = load_file(str(file))
        cfg = SAEConfig(**ours[str(layer)]) if str(layer) in ours else _config_of(config, tensors, layer)
        sae = SAE(cfg)
        with torch.no_grad():
            sae.W_enc.copy_(tensors["W_enc"].T)
            sae.W_dec.copy_(tensors["W_dec"])
            sae.b_enc.copy_(tensors["b_enc"])
            sae.b_dec.copy_(tensors["b_dec"])
            if "activation_function.threshold" in tensors:
                sae.threshold.copy_(tensors["activation_function.threshold"])
            if sae.W_skip is not None:
                sae.W_skip.copy_(tensors["W_skip"].T)
        built[layer] = sae.eval()
    return TranscoderSet(built)


def _config_of(config: dict, tensors: dict[str, torch.Tensor], layer: int) -> SAEConfig:
    """The `SAEConfig` of a circuit-tracer file written by another tool."""
    names = []
    for key in ("feature_input_hook", "feature_output_hook"):
        hook = config.get(key)
        if hook not in FROM_TL:
            raise MechscopeError(f"circuit-tracer {key} {hook!r} has no mechscope equivalent; known: "
                                 f"{', '.join(FROM_TL)}")
        names.append(f"blocks.{layer}.{FROM_TL[hook]}")
    d_sae, d_in = tensors["W_enc"].shape
    activation = config.get("activation")
    architecture = "topk" if activation == "topk" else "relu" if activation in (None, "relu") else None
    if "activation_function.threshold" in tensors and activation is None:
        architecture = "jumprelu"
    if architecture is None:
        raise MechscopeError(f"circuit-tracer activation {activation!r} is not one mechscope knows (topk, relu, "
                             "JumpReLU thresholds)")
    return SAEConfig(d_in=d_in, d_sae=d_sae, architecture=architecture, k=config.get("k") if architecture == "topk"
                     else None, d_out=tensors["W_dec"].shape[1], skip_connection="W_skip" in tensors,
                     hook_name=names[0], output_hook_name=names[1], model_name=str(config.get("model_name", "")))
