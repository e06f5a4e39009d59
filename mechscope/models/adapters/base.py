"""The declarative schema every architecture adapter fills in.

An adapter is data. Its `Components` name every Hugging Face module of the family once
(projections, norms, the attention and MLP modules, embeddings); where each canonical
activation is read (`Site`) is derived from them by one rule set (`derive_sites`), so the
hook points and the weight views cannot disagree about a path. `NormSpec` says which norm
the model uses. The hook engine and the weight views read these tables; no other module
knows anything about a particular family. `verify_adapter` checks a table against the
family's module tree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal

SiteKind = Literal["input", "input_inplace", "input_copy", "output", "attention", "head_out", "split_input",
                   "renorm_input"]
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
      - ``"input_copy"``: as ``input``, but a copy: a replacement reaches module ``path`` only,
        never the residual its caller keeps (``mlp.in``).
      - ``"split_input"``: a per-head copy of the residual the attention's pre-norm reads
        (``attn.q_input``/``k_input``/``v_input``); module ``path`` is the q, k or v (or fused
        qkv) projection whose output is recomputed per head from it (see
        `mechscope.models.split_inputs`).
      - ``"renorm_input"``: the residual a pre-norm shared with attention reads (GPT-J's ln_1),
        handed to module ``path`` (the MLP) through that norm recomputed on it (``mlp.in``).
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
class Components:
    """Every module path of a family, stated once (relative to a block unless noted).

    The canonical activations are read at these modules (see `derive_sites`): ``attn.out`` is
    the output of ``post_attn_norm`` if the family has one, else of ``o``; ``mlp.out`` of
    ``post_mlp_norm``, else of ``mlp``; ``mlp.pre`` the output of the gate (or the up
    projection; the gate half of a fused gate-up); ``mlp.post`` the input of ``mlp_out``;
    ``resid_mid`` the input of ``ln2`` (or of ``mlp`` without one); ``attn.{q,k,v}_input``
    per-head copies of the input of ``ln1`` feeding the q/k/v (or fused) projections;
    ``mlp.in`` a copy of the input of ``ln2`` (of ``mlp`` without one; through ``ln1`` again
    where the MLP shares it).
    """

    attn: str  # the attention module
    o: Proj
    mlp_out: Proj  # down projection
    mlp: str = "mlp"  # the MLP module
    mlp_in: Proj | None = None  # up projection; None when fused with the gate
    mlp_gate: Proj | None = None
    mlp_gate_up: Proj | None = None  # fused [gate, up] along the output features
    q: Proj | None = None
    k: Proj | None = None
    v: Proj | None = None
    qkv: FusedQKV | None = None
    ln1: str | None = None  # norm feeding attention (folded into W_Q/W_K/W_V); None: attention reads the residual
    ln2: str | None = None  # norm feeding the MLP (folded into W_in/W_gate); None: MLP reads ln1 (or the residual)
    post_attn_norm: str | None = None  # sandwich norm on the attention output (Gemma 2/3, OLMo 2)
    post_mlp_norm: str | None = None  # sandwich norm on the MLP output
    embed: str = ""  # absolute
    pos_embed: str | None = None  # absolute
    unembed: str = "lm_head"  # absolute
    ln_final: str = ""  # absolute
    # Norms on the projected queries / keys inside the attention module (Qwen3, Gemma 3: per head
    # over d_head; OLMo 2: one norm over all heads, n_heads * d_head wide).
    q_norm: str | None = None
    k_norm: str | None = None


def derive_sites(c: Components, sequential: bool) -> tuple[dict[str, Site], dict[str, Site]]:
    """``(global sites, block sites)`` of a family from its components; ``resid_mid`` only
    for families whose blocks can be sequential."""
    global_sites = {"embed": output(c.embed), "ln_final.out": output(c.ln_final)}
    if c.pos_embed is not None:
        global_sites["pos_embed"] = output(c.pos_embed)
    if c.mlp_gate is not None:
        pre = output(c.mlp_gate.path)
    elif c.mlp_in is not None:
        pre = output(c.mlp_in.path)
    else:
        pre = output(c.mlp_gate_up.path, chunk=(0, 2))
    block: dict[str, Site] = {"resid_pre": input_of("")}
    if c.ln1 is not None:
        block["ln1.out"] = output(c.ln1)
    block["attn.out"] = output(c.post_attn_norm or c.o.path)
    if sequential:
        block["resid_mid"] = residual_input_of(c.ln2 or c.mlp)
    if c.ln2 is not None:
        block["ln2.out"] = output(c.ln2)
    for part, proj in zip(("q", "k", "v"), (c.q, c.k, c.v)):
        block[f"attn.{part}_input"] = Site("split_input", (c.qkv or proj).path)
    if c.ln2 is not None:  # the MLP's own pre-norm reads a copy
        block["mlp.in"] = Site("input_copy", c.ln2)
    elif c.ln1 is not None:  # a pre-norm shared with attention (GPT-J): recomputed for the MLP
        block["mlp.in"] = Site("renorm_input", c.mlp)
    else:  # no pre-norm (OLMo 2): the MLP reads the residual
        block["mlp.in"] = Site("input_copy", c.mlp)
    block.update({"mlp.pre": pre, "mlp.post": input_of(c.mlp_out.path), "mlp.out": output(c.post_mlp_norm or c.mlp),
                  "resid_post": output("")})
    return global_sites, block


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
    components: Components
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
    # Config attribute holding the final-logit softcap (applied by the CausalLM head).
    final_softcap_attr: str | None = None
    # What a block returns: the hidden states, or a tuple whose first item they are.
    block_output: Literal["tensor", "tuple"] = "tensor"
    docs: str = field(default="", compare=False)

    @property
    def attention(self) -> str:
        """The attention module, relative to a block."""
        return self.components.attn

    @property
    def attn_out_norm(self) -> str | None:
        """The sandwich norm applied to the attention output before it joins the residual."""
        return self.components.post_attn_norm

    @cached_property
    def _sites(self) -> tuple[dict[str, Site], dict[str, Site]]:
        return derive_sites(self.components, sequential=self.parallel is not True)

    @property
    def global_sites(self) -> dict[str, Site]:
        """``embed``, ``pos_embed``, ``ln_final.out`` -> `Site` (absolute paths)."""
        return self._sites[0]

    @property
    def block_sites(self) -> dict[str, Site]:
        """Block activations -> `Site` (paths relative to a block), derived from the components."""
        return self._sites[1]

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
