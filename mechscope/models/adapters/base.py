"""The declarative schema every architecture adapter fills in.

An adapter is data: where each canonical activation lives in the Hugging Face module
tree (`Site`), how the weights are laid out (`WeightLayout`), and which norm the model
uses (`NormSpec`). The hook engine and the weight views read these tables; no other
module knows anything about a particular family.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

SiteKind = Literal["input", "input_inplace", "output", "attention", "head_out"]
AttentionEntry = Literal["interface", "method"]


@dataclass(frozen=True)
class Site:
    """Where one canonical activation is read and written.

    kind:
      - ``"output"``: the output of module ``path`` (first element if it returns a tuple).
      - ``"input"``: the first positional (or ``hidden_states``) input of module ``path``.
      - ``"input_inplace"``: as ``input``, but the tensor is also the residual the module's
        caller keeps; a replacement is written in place so the residual changes too.
      - ``"attention"``: produced inside the attention computation (q, k, v, scores, pattern, z).
      - ``"head_out"``: derived per-head contribution, computed where ``attn.out`` is produced.
    path: module path relative to the block (``""`` is the block itself) for block sites,
      absolute from the root for global sites.
    chunk: ``(index, n_chunks)`` to read one chunk of a fused output along the last dim.
    """

    kind: SiteKind
    path: str = ""
    chunk: tuple[int, int] | None = None


def output(path: str, chunk: tuple[int, int] | None = None) -> Site:
    return Site("output", path, chunk)


def input_of(path: str) -> Site:
    return Site("input", path)


def residual_input_of(path: str) -> Site:
    return Site("input_inplace", path)


@dataclass(frozen=True)
class Proj:
    """A projection module. ``conv1d`` marks GPT-2 style weights stored ``[in, out]``."""

    path: str
    conv1d: bool = False


@dataclass(frozen=True)
class FusedQKV:
    """One module producing q, k and v.

    layout ``"concat"``: output features are ``[q (h*dh), k (kv*dh), v (kv*dh)]``.
    layout ``"per_head"``: output features are ``[h, 3, dh]`` (GPT-NeoX).
    """

    path: str
    layout: Literal["concat", "per_head"]
    conv1d: bool = False


@dataclass(frozen=True)
class WeightLayout:
    """Paths (relative to a block unless noted) of every weight the views expose."""

    o: Proj
    mlp_out: Proj
    mlp_in: Proj | None = None  # up projection; None when fused with the gate
    mlp_gate: Proj | None = None
    mlp_gate_up: Proj | None = None  # fused [gate, up] along the output features
    q: Proj | None = None
    k: Proj | None = None
    v: Proj | None = None
    qkv: FusedQKV | None = None
    ln1: str | None = None  # norm feeding attention (folded into W_Q/W_K/W_V)
    ln2: str | None = None  # norm feeding the MLP (folded into W_in/W_gate); None: MLP reads ln1
    embed: str = ""  # absolute
    pos_embed: str | None = None  # absolute
    unembed: str = "lm_head"  # absolute
    ln_final: str = ""  # absolute


@dataclass(frozen=True)
class NormSpec:
    """``kind`` rms or layer; RMS norms of the Gemma family scale by ``(offset + weight)``."""

    kind: Literal["rms", "layer"]
    weight_offset: float = 0.0


@dataclass(frozen=True)
class Adapter:
    """Everything mechscope needs to know about one architecture family."""

    model_types: tuple[str, ...]
    layers: str  # absolute path of the ModuleList of blocks
    attention: str  # attention module, relative to a block
    global_sites: dict[str, Site]  # embed, pos_embed, ln_final.out
    block_sites: dict[str, Site]  # resid_pre, ln1.out, attn.out, resid_mid, ln2.out, mlp.*, resid_post
    weights: WeightLayout
    norm: NormSpec
    positional: Literal["rotary", "learned"]
    gated_mlp: bool
    # The attention computation is reached either through transformers' AttentionInterface
    # or, for models that bypass it, by wrapping one method of the attention module. A tuple
    # lists the entries a family has had across transformers releases, in order of preference;
    # the router uses the first one the installed attention class provides (see
    # ``models.attention.attention_entry_of``).
    attention_entry: AttentionEntry | tuple[AttentionEntry, ...] = "interface"
    attention_method: str = ""  # method entry: ``(query, key, value, attention_mask) -> (out, weights)``
    attention_scale_attr: str = ""  # module attribute dividing the scores (method entry only)
    # The family's eager attention computes the scores in fp32 (GPT-J): the explicit path does too.
    attention_upcast: bool = False
    # Parallel attention + MLP: a bool, or the config attribute that says so.
    parallel: bool | str = False
    # Sandwich norm applied to the attention output before it joins the residual.
    attn_out_norm: str | None = None
    # Config attribute holding the final-logit softcap (applied by the CausalLM head).
    final_softcap_attr: str | None = None
    # What a block returns: the hidden states, or a tuple whose first item they are.
    block_output: Literal["tensor", "tuple"] = "tensor"
    docs: str = field(default="", compare=False)

    @property
    def attention_entries(self) -> tuple[AttentionEntry, ...]:
        """The declared attention entries, in order of preference."""
        entry = self.attention_entry
        return (entry,) if isinstance(entry, str) else tuple(entry)


def since_transformers(version: str, new, old):
    """``new`` on transformers >= ``version``, ``old`` before it.

    For layout facts an upstream refactor changed that the installed classes cannot be asked
    about without running them (what a block returns). Facts that can be detected (which
    attention entry a class uses) are declared as alternatives and detected instead.
    """
    import transformers
    from packaging.version import Version

    installed = Version(transformers.__version__).release
    return new if installed >= Version(version).release else old
