"""Load and save SAEs and transcoders in the file layouts of the SAE ecosystem.

Supported layouts (``format=`` names, auto-detected from the files present):

- ``"saelens"``: a folder with ``cfg.json`` + ``sae_weights.safetensors`` (``W_enc`` `[d_in, d_sae]`,
  ``W_dec`` `[d_sae, d_in]`, ``b_enc``, ``b_dec``, ``threshold`` for JumpReLU). Both the flat configs
  of SAELens < 6 (``activation_fn_str``, ``activation_fn_kwargs``, ``hook_name`` at top level; no
  ``architecture`` at all in the oldest) and the 6.x configs (``metadata`` holding ``hook_name`` /
  ``model_name``, ``k`` at top level) are read. Loaded and saved (:func:`save_saelens`).
- ``"gemma_scope"``: ``params.npz`` with ``W_enc`` `[d_in, d_sae]`, ``W_dec`` `[d_sae, d_in]`,
  ``b_enc``, ``b_dec``, ``threshold`` (JumpReLU, no ``b_dec`` subtracted before encoding).
- ``"sparsify"`` (EleutherAI sparsify / sae): ``cfg.json`` + ``sae.safetensors`` with
  ``encoder.weight`` `[d_sae, d_in]` (an ``nn.Linear``), ``encoder.bias``, ``W_dec`` `[d_sae, d_in]`,
  ``b_dec``, and ``W_skip`` (``nn.Linear`` layout `[d_out, d_in]`) for skip transcoders. TopK.
- ``"dictionary_learning"``: ``ae.pt`` (a state dict, read with ``weights_only=True``) and, when
  present, the ``config.json`` written next to it. Covers ``AutoEncoder`` (``encoder.*``,
  ``decoder.weight`` `[d_in, d_sae]`, ``bias``), ``AutoEncoderNew`` (``decoder.bias``, no
  pre-encoder bias), ``AutoEncoderTopK`` / ``BatchTopKSAE`` (``k`` and scalar ``threshold``
  buffers, ``b_dec``) and the ``W_enc``-style ``JumpReluAutoEncoder`` / Matryoshka dictionaries.

Every matrix is checked against ``d_in`` (given, or from the config) and ``d_sae``: a matrix
stored in the other orientation than its layout documents is transposed; one matching neither
orientation raises :class:`~mechscope.errors.SelectionError`. Unreadable or missing files raise
:class:`~mechscope.errors.MechscopeError`. Nothing is ever unpickled beyond plain tensors.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import MechscopeError, MechscopeWarning, OutputPathError, SelectionError
from .modules import SAE, SAEConfig

FORMATS = ("saelens", "gemma_scope", "sparsify", "dictionary_learning")

SAELENS_CFG = "cfg.json"
SAELENS_WEIGHTS = "sae_weights.safetensors"
GEMMA_SCOPE_PARAMS = "params.npz"
SPARSIFY_CFG = "cfg.json"
SPARSIFY_WEIGHTS = "sae.safetensors"
DICTIONARY_LEARNING_WEIGHTS = "ae.pt"
DICTIONARY_LEARNING_CFG = "config.json"

# the file whose presence identifies each layout, in detection order
_MARKERS = {
    "saelens": SAELENS_WEIGHTS,
    "sparsify": SPARSIFY_WEIGHTS,
    "gemma_scope": GEMMA_SCOPE_PARAMS,
    "dictionary_learning": DICTIONARY_LEARNING_WEIGHTS,
}

# SAELens architecture name -> (mechscope architecture, transcoder?, skip connection?)
_SAELENS_ARCH = {
    "standard": ("relu", False, False),
    "relu": ("relu", False, False),
    "topk": ("topk", False, False),
    "jumprelu": ("jumprelu", False, False),
    "jump_relu": ("jumprelu", False, False),
    "batchtopk": ("batchtopk", False, False),
    "matryoshka_batchtopk": ("batchtopk", False, False),
    "transcoder": ("relu", True, False),
    "skip_transcoder": ("relu", True, True),
    "jumprelu_transcoder": ("jumprelu", True, False),
    "jumprelu_skip_transcoder": ("jumprelu", True, True),
}
_TO_SAELENS_ARCH = {"relu": "standard", "topk": "topk", "jumprelu": "jumprelu", "batchtopk": "batchtopk"}


# --------------------------------------------------------------------------- public API


def detect_format(path: str | Path) -> str:
    """The layout of ``path`` (a folder, or one of the weight files named above)."""
    path = Path(path)
    if not path.exists():
        raise MechscopeError(f"no SAE at {str(path)!r}: the path does not exist")
    if path.is_file():
        for fmt, marker in _MARKERS.items():
            if path.name == marker:
                return fmt
        if path.suffix == ".npz":
            return "gemma_scope"
        if path.suffix in (".pt", ".pth"):
            return "dictionary_learning"
        raise MechscopeError(
            f"cannot tell the SAE format of file {str(path)!r}; expected one of "
            f"{', '.join(_MARKERS.values())} (or pass format=, one of {', '.join(FORMATS)})"
        )
    found = [fmt for fmt, marker in _MARKERS.items() if (path / marker).is_file()]
    if not found:
        present = sorted(p.name for p in path.iterdir())[:20]
        raise MechscopeError(
            f"no SAE weights found in {str(path)!r}: expected one of {', '.join(_MARKERS.values())}; "
            f"the folder holds {present or 'nothing'}"
        )
    return found[0]


def load_sae(
    path: str | Path,
    *,
    d_in: int | None = None,
    format: str | None = None,
    hook_name: str | None = None,
    model_name: str | None = None,
) -> SAE:
    """Load an SAE or transcoder saved by SAELens, Gemma Scope, sparsify or dictionary_learning.

    ``path`` is the SAE's folder or its weight file. ``d_in`` (the model's activation width)
    is checked against the file; it is needed only where the file says nothing about it.
    ``format`` overrides auto-detection. ``hook_name`` / ``model_name`` override (or supply,
    for layouts that do not record them) the mechscope activation name and model name.
    Returns an fp32 SAE in eval mode.
    """
    path = Path(path)
    if format is None:
        format = detect_format(path)
    elif format not in FORMATS:
        raise MechscopeError(f"unknown SAE format {format!r}; choose from {', '.join(FORMATS)}")
    folder = path.parent if path.is_file() else path
    loader = {
        "saelens": _load_saelens,
        "gemma_scope": _load_gemma_scope,
        "sparsify": _load_sparsify,
        "dictionary_learning": _load_dictionary_learning,
    }[format]
    weights_file = path if path.is_file() else folder / _MARKERS[format]
    sae = loader(folder, weights_file, d_in)
    overrides = {"hook_name": hook_name, "model_name": model_name}
    sae.cfg = replace(sae.cfg, **{k: v for k, v in overrides.items() if v is not None})  # checked like any config
    return sae.eval()


def save_saelens(sae: SAE, path: str | Path) -> Path:
    """Write ``sae`` as a SAELens folder (``cfg.json`` + ``sae_weights.safetensors``, 6.x config
    layout). Returns the folder (created if needed; an existing file there is refused)."""
    from safetensors.torch import save_file

    cfg = sae.cfg
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputPathError(f"cannot save the SAE to {str(path)!r}: it is a file, and a SAELens SAE is a folder "
                              f"({SAELENS_CFG} + {SAELENS_WEIGHTS}); give a folder path")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputPathError(f"cannot save the SAE to {str(path)!r}: {str(parent)!r} is a file")
            break
    path.mkdir(parents=True, exist_ok=True)
    arch = _TO_SAELENS_ARCH[cfg.architecture]
    if cfg.is_transcoder:
        arch = {"standard": "transcoder", "jumprelu": "jumprelu_transcoder"}.get(arch)
        if arch is None:
            raise MechscopeError(f"SAELens has no {cfg.architecture} transcoder; cannot save this one")
        if cfg.skip_connection:
            arch = arch.replace("transcoder", "skip_transcoder")
    tensors = {name: getattr(sae, name) for name in ("W_enc", "b_enc", "W_dec", "b_dec")}
    if cfg.architecture in ("jumprelu", "batchtopk"):
        tensors["threshold"] = sae.threshold
    if sae.W_skip is not None:
        tensors["W_skip"] = sae.W_skip.T  # SAELens applies x @ W_skip.T: [d_out, d_in]
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous().clone() for k, v in tensors.items()}
    save_file(tensors, str(path / SAELENS_WEIGHTS))

    metadata: dict[str, Any] = {"model_name": cfg.model_name, "hook_name": cfg.hook_name}
    if cfg.is_transcoder:
        metadata["hook_name_out"] = cfg.output_hook_name
    out: dict[str, Any] = {
        "architecture": arch,
        "d_in": cfg.d_in,
        "d_sae": cfg.d_sae,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": cfg.pre_encoder_bias,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": metadata,
    }
    if cfg.k is not None:
        out["k"] = cfg.k
    if cfg.is_transcoder:
        out["d_out"] = cfg.d_out
    (path / SAELENS_CFG).write_text(json.dumps(out, indent=2))
    return path


# --------------------------------------------------------------------------- readers


def _read_json(file: Path) -> dict:
    if not file.is_file():
        raise MechscopeError(f"missing SAE config {str(file)!r}")
    try:
        data = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MechscopeError(f"cannot read SAE config {str(file)!r}: {e}") from e
    if not isinstance(data, dict):
        raise MechscopeError(f"SAE config {str(file)!r} is not a JSON object")
    return data


def _read_safetensors(file: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if not file.is_file():
        raise MechscopeError(f"missing SAE weights {str(file)!r}")
    try:
        return load_file(str(file), device="cpu")
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise MechscopeError(f"cannot read SAE weights {str(file)!r} (corrupt or not safetensors): {e}") from e


def _read_npz(file: Path) -> dict[str, torch.Tensor]:
    if not file.is_file():
        raise MechscopeError(f"missing SAE weights {str(file)!r}")
    try:
        with open(file, "rb") as handle, np.load(handle, allow_pickle=False) as data:  # handle closed on errors too
            return {k: torch.from_numpy(np.asarray(data[k], dtype=np.float32)) for k in data.files}
    except Exception as e:  # zipfile / numpy errors for corrupt files
        raise MechscopeError(f"cannot read SAE weights {str(file)!r} (corrupt or not .npz): {e}") from e


def _read_torch(file: Path) -> dict[str, torch.Tensor]:
    if not file.is_file():
        raise MechscopeError(f"missing SAE weights {str(file)!r}")
    try:
        data = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt zip, or a pickle that is more than tensors
        raise MechscopeError(
            f"cannot read SAE weights {str(file)!r}: not a readable state dict of plain tensors ({e})"
        ) from e
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise MechscopeError(f"{str(file)!r} does not hold a state dict (a dict of tensors)")
    return dict(data)


# --------------------------------------------------------------------------- shape checks


def _require(tensors: dict[str, torch.Tensor], names: tuple[str, ...], file: Path) -> None:
    missing = [n for n in names if n not in tensors]
    if missing:
        raise MechscopeError(
            f"{str(file)!r} lacks tensor(s) {', '.join(missing)}; it holds {', '.join(sorted(tensors)) or 'none'}"
        )


def _resolve_d_in(weight: torch.Tensor, name: str, in_axis: int, d_in: int | None, cfg_d_in: int | None,
                  cfg_file: str | None) -> int:
    """``d_in`` from the caller, the config and the encoder's shape, all checked against each other."""
    if weight.ndim != 2:
        raise SelectionError(f"{name} must be a matrix, got shape {tuple(weight.shape)}")
    if d_in is not None and cfg_d_in is not None and d_in != cfg_d_in:
        raise SelectionError(f"{cfg_file} says d_in = {cfg_d_in} but the model's d_in is {d_in}")
    want = d_in if d_in is not None else cfg_d_in
    if want is None:
        return int(weight.shape[in_axis])
    if want not in weight.shape:
        who = "the model's d_in" if d_in is not None else f"{cfg_file} says d_in"
        raise SelectionError(f"{name} has shape {tuple(weight.shape)} but {who} is {want}")
    return want


def _matrix(tensors: dict[str, torch.Tensor], name: str, shape: tuple[int, int], dims: str,
            stored_transposed: bool) -> torch.Tensor:
    """``tensors[name]`` as ``shape`` (mechscope orientation). ``stored_transposed``: the layout
    documents the transpose. A file holding the other orientation is accepted (a square matrix
    is taken as documented)."""
    t = tensors[name]
    stored = shape[::-1] if stored_transposed else shape
    if tuple(t.shape) == stored:
        return t.T if stored_transposed else t
    if t.ndim == 2 and tuple(t.shape) == shape[::-1]:
        return t if stored_transposed else t.T
    raise SelectionError(
        f"{name} has shape {tuple(t.shape)}, which fits neither {list(stored)} nor its transpose "
        f"(expected from {dims})"
    )


def _vector(tensors: dict[str, torch.Tensor], name: str, n: int, what: str, *, scalar_ok: bool = False
            ) -> torch.Tensor:
    t = tensors[name]
    if scalar_ok and t.numel() == 1:
        return t.reshape(()).expand(n)
    if tuple(t.shape) != (n,):
        raise SelectionError(f"{name} has shape {tuple(t.shape)} but should be [{n}] ({what})")
    return t


def _build(cfg: SAEConfig, W_enc, b_enc, W_dec, b_dec, threshold=None, W_skip=None) -> SAE:
    sae = SAE(cfg)
    with torch.no_grad():
        for name, value in (("W_enc", W_enc), ("b_enc", b_enc), ("W_dec", W_dec), ("b_dec", b_dec),
                            ("threshold", threshold), ("W_skip", W_skip)):
            if value is not None:
                param = getattr(sae, name)
                if not torch.isfinite(value).all():
                    raise MechscopeError(f"{name} holds NaN or infinite values; the SAE file is corrupt")
                param.copy_(value.to(torch.float32))
    return sae


# --------------------------------------------------------------------------- SAELens


def _saelens_arch(cfg: dict, cfg_file: Path) -> str:
    """The SAELens architecture a config states, or the one its older keys imply: ``activation_fn``
    ("topk" or not) in pre-architecture configs, and TopK (with a warning) for a config that
    gives ``k`` and nothing else, since only TopK-style SAEs have a k."""
    arch = cfg.get("architecture")
    if arch:
        return str(arch)
    act = cfg.get("activation_fn_str") or cfg.get("activation_fn")  # pre-architecture configs
    kwargs = cfg.get("activation_fn_kwargs") if isinstance(cfg.get("activation_fn_kwargs"), dict) else {}
    has_k = cfg.get("k") is not None or kwargs.get("k") is not None
    if act is None and has_k:
        warnings.warn(f"{cfg_file}: no 'architecture' or 'activation_fn' but k = {cfg.get('k', kwargs.get('k'))}: "
                      "read as a TopK SAE (add \"architecture\": \"topk\" to the config to say so)", stacklevel=4)
        return "topk"
    if act not in (None, "topk") and has_k:
        raise MechscopeError(f"{cfg_file}: activation_fn {act!r} with k: only TopK SAEs have a k; fix the config "
                             "(activation_fn 'topk', or no k)")
    return "topk" if act == "topk" else "standard"


def _load_saelens(folder: Path, weights_file: Path, d_in: int | None) -> SAE:
    cfg_file = folder / SAELENS_CFG
    raw = _read_json(cfg_file)
    tensors = _read_safetensors(weights_file)
    meta = raw.get("metadata") if isinstance(raw.get("metadata"), dict) else {}

    arch_name = _saelens_arch(raw, cfg_file)
    if arch_name not in _SAELENS_ARCH:
        raise MechscopeError(
            f"{cfg_file}: SAELens architecture {arch_name!r} is not supported; "
            f"supported: {', '.join(_SAELENS_ARCH)}"
        )
    arch, transcoder, skip = _SAELENS_ARCH[arch_name]
    skip = skip or "W_skip" in tensors
    transcoder = transcoder or skip or raw.get("d_out") not in (None, raw.get("d_in"))

    norm = raw.get("normalize_activations")
    if norm in ("constant_norm_rescale", "layer_norm"):
        raise MechscopeError(f"{cfg_file}: normalize_activations = {norm!r} (per-token input normalisation) "
                             "cannot be represented by a mechscope SAE")
    if norm not in (None, False, "none"):
        warnings.warn(f"{cfg_file}: normalize_activations = {norm!r}: inputs were rescaled in training; "
                      "unless the scaling factor was folded into the weights, scale activations yourself",
                      stacklevel=3)
    if raw.get("reshape_activations") == "hook_z" or raw.get("hook_head_index") is not None:
        warnings.warn(f"{cfg_file}: this SAE reads attention hook_z (per head); feed it the flattened "
                      "[..., n_heads * d_head] activation", stacklevel=3)

    _require(tensors, ("W_enc", "b_enc", "W_dec", "b_dec"), weights_file)
    cfg_d_in = raw.get("d_in")
    din = _resolve_d_in(tensors["W_enc"], "W_enc", 0, d_in, cfg_d_in, cfg_file.name)
    d_sae = int(raw.get("d_sae") or tensors["W_enc"].shape[1 if tensors["W_enc"].shape[0] == din else 0])
    d_out = int(raw.get("d_out") or tensors["W_dec"].shape[-1]) if transcoder else None
    d_output = d_out or din
    dims = f"d_in = {din}, d_sae = {d_sae}" + (f", d_out = {d_out}" if d_out else "")

    W_enc = _matrix(tensors, "W_enc", (din, d_sae), dims, False)
    W_dec = _matrix(tensors, "W_dec", (d_sae, d_output), dims, False)
    b_enc = _vector(tensors, "b_enc", d_sae, "d_sae")
    b_dec = _vector(tensors, "b_dec", d_output, "d_out" if d_out else "d_in")
    threshold = None
    if arch == "jumprelu" or (arch == "batchtopk" and "threshold" in tensors):
        if "threshold" not in tensors:
            if "log_threshold" in tensors:  # training checkpoints
                tensors["threshold"] = tensors["log_threshold"].exp()
            else:
                _require(tensors, ("threshold",), weights_file)
        threshold = _vector(tensors, "threshold", d_sae, "d_sae", scalar_ok=True)
    W_skip = _matrix(tensors, "W_skip", (din, d_output), dims, True) if skip else None  # [d_out, d_in] on disk

    if "scaling_factor" in tensors:  # finetuning_scaling_factor: latents scaled before decoding
        W_dec = W_dec * _vector(tensors, "scaling_factor", d_sae, "d_sae")[:, None]
    if raw.get("rescale_acts_by_decoder_norm"):  # latents computed times ||W_dec row||, decoded divided by it
        norms = W_dec.norm(dim=-1)
        W_enc, b_enc, W_dec = W_enc * norms, b_enc * norms, W_dec / norms[:, None]
        if threshold is not None:
            threshold = threshold * norms

    k = raw.get("k")
    if k is None and isinstance(raw.get("activation_fn_kwargs"), dict):
        k = raw["activation_fn_kwargs"].get("k")
    if arch in ("topk", "batchtopk"):
        if k is None:
            raise MechscopeError(f"{cfg_file}: a {arch_name} SAE needs k (cfg 'k' or activation_fn_kwargs.k)")
        if isinstance(k, float) and not k.is_integer():
            raise MechscopeError(f"{cfg_file}: k = {k} is not a whole number of latents")
        k = int(k)
    else:
        k = None

    cfg = SAEConfig(
        d_in=din,
        d_sae=d_sae,
        architecture=arch,
        k=k,
        d_out=d_out,
        skip_connection=skip,
        pre_encoder_bias=bool(raw.get("apply_b_dec_to_input", True)),
        hook_name=str(raw.get("hook_name") or meta.get("hook_name") or ""),
        output_hook_name=(raw.get("hook_name_out") or meta.get("hook_name_out")) if transcoder else None,
        model_name=str(raw.get("model_name") or meta.get("model_name") or ""),
    )
    return _build(cfg, W_enc, b_enc, W_dec, b_dec, threshold, W_skip)


# --------------------------------------------------------------------------- Gemma Scope


def _load_gemma_scope(folder: Path, weights_file: Path, d_in: int | None) -> SAE:
    tensors = _read_npz(weights_file)
    _require(tensors, ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"), weights_file)
    din = _resolve_d_in(tensors["W_enc"], "W_enc", 0, d_in, None, None)
    w = tensors["W_enc"]
    d_sae = int(w.shape[1] if w.shape[0] == din else w.shape[0])
    d_output = int(tensors["b_dec"].reshape(-1).shape[0])
    transcoder = d_output != din
    dims = f"d_in = {din}, d_sae = {d_sae}" + (f", d_out = {d_output}" if transcoder else "")
    cfg = SAEConfig(d_in=din, d_sae=d_sae, architecture="jumprelu", d_out=d_output if transcoder else None,
                    pre_encoder_bias=False)
    return _build(
        cfg,
        _matrix(tensors, "W_enc", (din, d_sae), dims, False),
        _vector(tensors, "b_enc", d_sae, "d_sae"),
        _matrix(tensors, "W_dec", (d_sae, d_output), dims, False),
        _vector(tensors, "b_dec", d_output, "d_in"),
        _vector(tensors, "threshold", d_sae, "d_sae"),
    )


# --------------------------------------------------------------------------- sparsify


def _load_sparsify(folder: Path, weights_file: Path, d_in: int | None) -> SAE:
    cfg_file = folder / SPARSIFY_CFG
    raw = _read_json(cfg_file)
    tensors = _read_safetensors(weights_file)
    _require(tensors, ("encoder.weight", "encoder.bias", "W_dec", "b_dec"), weights_file)
    if raw.get("activation", "topk") != "topk":
        raise MechscopeError(f"{cfg_file}: sparsify activation {raw.get('activation')!r} is not supported (only topk)")
    din = _resolve_d_in(tensors["encoder.weight"], "encoder.weight", 1, d_in, raw.get("d_in"), cfg_file.name)
    enc = tensors["encoder.weight"]
    d_sae_file = int(enc.shape[0] if enc.shape[1] == din else enc.shape[1])
    d_sae = int(raw.get("num_latents") or 0) or din * int(raw.get("expansion_factor") or 0) or d_sae_file
    if d_sae != d_sae_file:
        raise SelectionError(
            f"encoder.weight has shape {tuple(enc.shape)} but {cfg_file.name} implies {d_sae} latents "
            f"(num_latents = {raw.get('num_latents')}, expansion_factor = {raw.get('expansion_factor')}, d_in = {din})"
        )
    if "k" not in raw:
        raise MechscopeError(f"{cfg_file}: missing k (number of active latents)")
    transcode = bool(raw.get("transcode", False))
    skip = "W_skip" in tensors
    d_output = int(tensors["b_dec"].reshape(-1).shape[0])
    is_tc = transcode or skip or d_output != din
    dims = f"d_in = {din}, d_sae = {d_sae}" + (f", d_out = {d_output}" if is_tc else "")
    cfg = SAEConfig(d_in=din, d_sae=d_sae, architecture="topk", k=int(raw["k"]),
                    d_out=d_output if is_tc else None, skip_connection=skip, pre_encoder_bias=not is_tc)
    W_enc = _matrix(tensors, "encoder.weight", (din, d_sae), dims, True)
    b_enc = _vector(tensors, "encoder.bias", d_sae, "d_sae")
    b_dec = _vector(tensors, "b_dec", d_output, "d_in")
    if is_tc and not transcode:  # a skip SAE: sparsify still encodes x - b_dec; fold that into b_enc
        b_enc = b_enc - b_dec @ W_enc
    return _build(cfg, W_enc, b_enc, _matrix(tensors, "W_dec", (d_sae, d_output), dims, False), b_dec,
                  W_skip=_matrix(tensors, "W_skip", (din, d_output), dims, True) if skip else None)


# --------------------------------------------------------------------------- dictionary_learning


def _encoder_decoder(tensors: dict[str, torch.Tensor], keys: tuple[str, str, str], linear_layout: bool,
                     d_in: int | None, cfg_d_in, cfg_name: str):
    """``(d_in, d_sae, W_enc [d_in, d_sae], b_enc, W_dec [d_sae, d_in])`` from an encoder matrix,
    its bias and a decoder matrix stored either as ``W_enc``/``W_dec`` (``linear_layout`` False)
    or as ``nn.Linear`` weights (True: encoder `[d_sae, d_in]`, decoder `[d_in, d_sae]`)."""
    enc_key, bias_key, dec_key = keys
    in_axis = 1 if linear_layout else 0
    din = _resolve_d_in(tensors[enc_key], enc_key, in_axis, d_in, cfg_d_in, cfg_name)
    enc = tensors[enc_key]
    d_sae = int(enc.shape[1 - in_axis] if enc.shape[in_axis] == din else enc.shape[in_axis])
    dims = f"d_in = {din}, d_sae = {d_sae}"
    return (din, d_sae, _matrix(tensors, enc_key, (din, d_sae), dims, linear_layout),
            _vector(tensors, bias_key, d_sae, "d_sae"), _matrix(tensors, dec_key, (d_sae, din), dims, linear_layout))


def _load_dictionary_learning(folder: Path, weights_file: Path, d_in: int | None) -> SAE:
    tensors = _read_torch(weights_file)
    trainer: dict = {}
    if (folder / DICTIONARY_LEARNING_CFG).is_file():
        trainer = _read_json(folder / DICTIONARY_LEARNING_CFG).get("trainer") or {}
    dict_class = str(trainer.get("dict_class") or "")
    model_name = str(trainer.get("lm_name") or "")
    cfg_d_in = trainer.get("activation_dim")
    cfg_name = DICTIONARY_LEARNING_CFG

    if "r_mag" in tensors or "gate_bias" in tensors:
        raise MechscopeError(f"{weights_file}: gated dictionaries (GatedAutoEncoder) are not supported")

    if "W_enc" in tensors:  # JumpReluAutoEncoder, Matryoshka BatchTopK: W_enc [d_in, d_sae]
        _require(tensors, ("W_enc", "b_enc", "W_dec", "b_dec"), weights_file)
        din, d_sae, W_enc, b_enc, W_dec = _encoder_decoder(tensors, ("W_enc", "b_enc", "W_dec"), False,
                                                           d_in, cfg_d_in, cfg_name)
        b_dec = _vector(tensors, "b_dec", din, "d_in")
        if "k" in tensors:  # Matryoshka BatchTopK: encodes x - b_dec, thresholds at eval
            arch, pre_bias, k = "batchtopk", True, int(tensors["k"].item())
        else:  # JumpReluAutoEncoder: apply_b_dec_to_input = False
            arch, pre_bias, k = "jumprelu", False, None
        _require(tensors, ("threshold",), weights_file)
        threshold = _vector(tensors, "threshold", d_sae, "d_sae", scalar_ok=True)
        cfg = SAEConfig(d_in=din, d_sae=d_sae, architecture=arch, k=k, pre_encoder_bias=pre_bias,
                        model_name=model_name)
        return _build(cfg, W_enc, b_enc, W_dec, b_dec, threshold)

    _require(tensors, ("encoder.weight", "encoder.bias", "decoder.weight"), weights_file)
    din, d_sae, W_enc, b_enc, W_dec = _encoder_decoder(tensors, ("encoder.weight", "encoder.bias", "decoder.weight"),
                                                       True, d_in, cfg_d_in, cfg_name)
    threshold = None
    k = None
    if "k" in tensors:  # AutoEncoderTopK or BatchTopKSAE: encode x - b_dec
        _require(tensors, ("b_dec",), weights_file)
        b_dec = _vector(tensors, "b_dec", din, "d_in")
        k = int(tensors["k"].item())
        batch = "batchtopk" in dict_class.lower()
        if not dict_class:
            warnings.warn(f"{weights_file}: no {DICTIONARY_LEARNING_CFG} saying which class wrote it; AutoEncoderTopK "
                          "and BatchTopKSAE save the same keys, so it is read as AutoEncoderTopK (top-k per "
                          "token). Keep the config.json next to ae.pt to load a BatchTopKSAE.", MechscopeWarning,
                          stacklevel=3)
        arch, pre_bias = ("batchtopk" if batch else "topk"), True
        if batch:
            _require(tensors, ("threshold",), weights_file)
            threshold = _vector(tensors, "threshold", d_sae, "d_sae", scalar_ok=True)
    elif "bias" in tensors:  # AutoEncoder: relu(encoder(x - bias)), decoder(f) + bias
        b_dec = _vector(tensors, "bias", din, "d_in")
        arch, pre_bias = "relu", True
    elif "decoder.bias" in tensors:  # AutoEncoderNew: relu(encoder(x)), decoder(f) with its bias
        b_dec = _vector(tensors, "decoder.bias", din, "d_in")
        arch, pre_bias = "relu", False
    else:
        raise MechscopeError(f"{weights_file}: unrecognised dictionary_learning state dict "
                             f"(keys: {', '.join(sorted(tensors))})")
    cfg = SAEConfig(d_in=din, d_sae=d_sae, architecture=arch, k=k, pre_encoder_bias=pre_bias, model_name=model_name)
    return _build(cfg, W_enc, b_enc, W_dec, b_dec, threshold)
