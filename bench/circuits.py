"""Benchmark: edge attribution patching (EAP) against TransformerLens 4 on one GPT-2 model.

A random-initialised GPT-2 (GPT-2-small-shaped blocks: d_model 768, 12 heads, fewer layers;
seeded, saved once in Hugging Face format to a temporary folder) and one set of prompt pairs
(random tokens with a few corrupted positions, or IOI with ABC corruption on the bundled
tokenizer), logit difference ``logit[answer] - logit[wrong]`` at the last position, mean over
prompts. Rows:

- mechscope's own costs as multiples of one plain forward (the issue's targets in brackets):
  EAP (<= 3.5x), EAP-IG-inputs with 5 steps (<= 2m + 2.5 = 12.5x), one edge-patched
  evaluation of a 5 % circuit as faithfulness runs it (the ablation forward, which stops after
  the last block, and the patched forward with logits at the answer; <= 2.5x), one edge-pruning step
  (patched forward and backward through a learned mask), and ACDC (KL, tau 1e-3): its edge
  evaluations, forwards and time.
- mechscope EAP (``mechscope_eap_scores``) vs TransformerLens 4's
  ``attribution_patch(..., EdgeAttributionConfig(granularity="edge"))`` run in .venv-peers
  (``bench/peers/circuits_peers.py``): Pearson r and max |diff| of the edge scores after
  mapping TL's node names onto mechscope's, the time ratio, each method's time as a multiple
  of one plain forward of its own library, and the peak-RSS rise per token.

Name mapping (TL ``Node`` kind -> mechscope ``Graph`` name; TL positions are summed over)::

    writers  embed               -> input      (TL: hook_embed; mechscope: blocks.0.resid_pre,
                                                token + position embedding: the same delta)
             attn_head_out[l,h]  -> a{l}.h{h}  (TL: attn.hook_result[h]; mechscope: attn.head_out)
             mlp_out[l]          -> m{l}
    readers  q_input[l,h]        -> a{l}.h{h}<q>   (likewise k_input -> <k>, v_input -> <v>;
                                                    pre-ln1 residual, one copy per head)
             mlp_in[l]           -> m{l}           (pre-ln2 residual)
             logits[L-1]         -> logits         (TL: blocks.{L-1}.hook_resid_post)

Sign and gradient point: TL scores ``(a_clean(u) - a_corrupt(u)) . dm/d in(v)`` with the
gradient on the *corrupted* run; mechscope (Syed et al., hannamw/EAP-IG) scores ``(a_corrupt(u)
- a_clean(u)) . dm/d in(v)`` with the gradient on the *clean* run. The two are the same number
when mechscope is called with the pairs swapped (its "clean" = TL's corrupted), which is what
the exact comparison does; the unswapped call is printed too (Pearson r with TL's negated scores:
first-order agreement only).

    python bench/circuits.py                # 4 layers, 8 prompts x 16 tokens, 3 repeats
    python bench/circuits.py --quick        # tiny GPT-2 (2 layers, d_model 64, 4 heads, vocab 97)
    python bench/circuits.py --task ioi     # IOI prompts on the bundled tokenizer (vocab 49152)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
PEERS = ROOT / ".venv-peers" / "bin" / "python"
PEER_SCRIPT = ROOT / "bench" / "peers" / "circuits_peers.py"


# -- mechscope side -------------------------------------------------------------------------------
def mechscope_eap_scores(model, clean: torch.Tensor, corrupted: torch.Tensor, answers: torch.Tensor,
                         wrong: torch.Tensor) -> tuple[torch.Tensor, list[str], list[str]]:
    """mechscope's EAP edge scores for the bench, as ``(scores, src_names, dst_names)``.

    scores: float ``[n_src, n_dst]`` in `ms.circuits.Graph.from_model(model)`'s layout (EAP-IG's:
      sources input, a{l}.h{h}, m{l}; destinations a{l}.h{h}<q|k|v>, m{l}, logits), zero off the
      real edges; src_names / dst_names: that graph's name tables.
    Semantics: the metric m = mean over prompts b of (logits[b, -1, answers[b]] - logits[b, -1,
      wrong[b]]); scores[u, v] = sum over prompts, positions and d_model of
      (a_corrupted(u) - a_clean(u)) * dm/d input(v), the gradient taken on the run of ``clean``
      (2 forwards + 1 backward, parameters frozen, fp32). Edges are position-free (summed over
      positions); k/v destinations per KV head (GPT-2: one per query head, so EAP-IG's names).
    """
    from mechscope.circuits import eap
    from mechscope.data.tasks import PromptPairs

    pairs = PromptPairs(clean, corrupted, answers, wrong)
    result = eap(model, pairs)  # logit_diff per prompt; scores summed over prompts
    return result.scores / len(pairs), result.graph.src_names, result.graph.dst_names  # the mean metric's


def own_costs(model, pairs: dict, forward_s: float, repeats: int) -> None:
    """Rows of mechscope's EAP-IG, edge-patched evaluation, edge-pruning step and ACDC costs."""
    import mechscope.circuits as C
    from mechscope.causal.metrics import logit_diff
    from mechscope.data.tasks import PromptPairs

    p = PromptPairs(pairs["clean"], pairs["corrupted"], pairs["answers"], pairs["wrong"])
    graph = C.Graph.from_model(model)

    def row(name: str, seconds: float, target: str = "") -> None:
        print(f"{name:34s} {seconds:8.3f} {seconds / forward_s:10.2f} {'':9s} {'':10s}   {target}")

    row("mechscope EAP-IG-inputs, 5 steps", median_time(lambda: C.eap_ig(model, p, steps=5), repeats),
        "[target <= 12.5]")
    scores = C.eap(model, p)
    W = C.pruned_weights(graph, scores.top_n(max(1, graph.n_edges // 20)).in_graph)

    at = p.answer_positions[:, None]  # what faithfulness does for logit_diff (an answer-only metric)

    def patched_evaluation():
        ablated = C.ablated_sources(model, graph, p.corrupted)
        with torch.no_grad():
            return C.patched_logits(model, graph, p.clean, ablated, W, logits_at=at)

    patched_evaluation()
    row("one edge-patched evaluation (5 %)", median_time(patched_evaluation, max(repeats, 5)), "[target <= 2.5]")
    ablated = C.ablated_sources(model, graph, p.corrupted)
    log_alpha = torch.full((graph.n_src, graph.n_dst), 3.0, requires_grad=True)

    def pruning_step():
        z = C.sample_gates(log_alpha) * graph.real
        with torch.enable_grad(), model.frozen():
            logits = C.patched_logits(model, graph, p.clean, ablated, C.pruned_weights(graph, z[None]))
            logit_diff(logits, p).sum().backward()

    pruning_step()
    row("one edge-pruning step (fwd + bwd)", median_time(pruning_step, max(repeats, 3)))
    start = time.perf_counter()
    circuit = C.acdc(model, p, 1e-3)
    seconds = time.perf_counter() - start
    print(f"{'mechscope ACDC (KL, tau 1e-3)':34s} {seconds:8.3f} {seconds / forward_s:10.2f}   "
          f"{circuit.selection.split('; ')[1].rstrip(')')}, {circuit.n_edges} edges kept")


def bundled_patched_costs(n_prompts: int, repeats: int) -> None:
    """Edge-patched evaluations on the bundled model (30 layers, 301 sources) of EAP's top 1-50 %
    circuits on IOI, as faithfulness runs them, in multiples of one plain forward; against the
    same forward summing W over the pruned edges of every destination (``kept_sums=False``: the
    naive way, and mechscope's before the kept form)."""
    import mechscope as ms
    import mechscope.circuits as C

    model = ms.load("smollm2-135m")
    pairs = ms.ioi(model, n_prompts)
    graph = C.Graph.from_model(model)
    at = pairs.answer_positions[:, None]
    rows = pairs.clean

    def forward():
        with torch.no_grad():
            model(rows)

    forward()
    forward_s = median_time(forward, max(repeats, 5))
    ablated = C.ablated_sources(model, graph, pairs.corrupted)
    ablation_s = median_time(lambda: C.ablated_sources(model, graph, pairs.corrupted), repeats)
    scores = C.attribute(model, pairs, method="EAP")
    print(f"\nbundled model, {n_prompts} IOI prompts: one plain forward {forward_s:.3f} s, the ablation forward "
          f"{ablation_s / forward_s:.2f}x")
    print(f"{'EAP top edges':14s} {'patched x fwd':>14s} {'+ ablation':>11s} {'pruned sums x fwd':>18s} {'speed-up':>9s}")
    for percent in (1, 5, 20, 50):
        W = C.pruned_weights(graph, scores.top_n(graph.n_edges * percent // 100, absolute=True).in_graph)

        def patched(kept_sums: bool, W=W) -> float:
            patch = C.EdgePatch(graph, ablated, W, kept_sums=kept_sums)
            start = time.perf_counter()
            with torch.no_grad(), model.hooks(patch.hooks()):
                model(rows, logits_at=at)
            return time.perf_counter() - start

        patched(True), patched(False)
        pairs_of_times = [(patched(True), patched(False)) for _ in range(max(repeats, 5))]  # interleaved: fair under drift
        chosen = statistics.median(t for t, _ in pairs_of_times)
        summed = statistics.median(t for _, t in pairs_of_times)
        print(f"{percent:>12d} % {chosen / forward_s:14.2f} {(chosen + ablation_s) / forward_s:11.2f} "
              f"{summed / forward_s:18.2f} {summed / chosen:8.2f}x")


# -- model and prompts ----------------------------------------------------------------------------
def build_model(folder: Path, layers: int, d_model: int, heads: int, vocab: int, seed: int) -> None:
    """A seeded random GPT-2 saved with ``save_pretrained`` (no tokenizer)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(n_layer=layers, n_embd=d_model, n_head=heads, vocab_size=vocab, n_positions=256,
                        bos_token_id=0, eos_token_id=0, pad_token_id=0)
    GPT2LMHeadModel(config).eval().save_pretrained(folder)


def random_pairs(n: int, length: int, vocab: int, corrupt_positions: int, seed: int) -> dict[str, torch.Tensor]:
    """Random clean prompts; the corrupted ones differ at ``corrupt_positions`` random positions
    (never the last) of each prompt; random answer / wrong ids (distinct)."""
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(0, vocab, (n, length), generator=g)
    corrupted = clean.clone()
    for i in range(n):
        where = torch.randperm(length - 1, generator=g)[:corrupt_positions]
        corrupted[i, where] = (clean[i, where] + torch.randint(1, vocab, (len(where),), generator=g)) % vocab
    answers = torch.randint(0, vocab, (n,), generator=g)
    wrong = (answers + torch.randint(1, vocab, (n,), generator=g)) % vocab
    return {"clean": clean, "corrupted": corrupted, "answers": answers, "wrong": wrong}


def ioi_pairs(model, n: int) -> dict[str, torch.Tensor]:
    from mechscope.data.ioi import ioi

    pairs = ioi(model, n)
    return {"clean": pairs.clean, "corrupted": pairs.corrupted, "answers": pairs.answers, "wrong": pairs.wrong}


def bundled_tokenizer():
    from transformers import AutoTokenizer

    from mechscope.models.bundled import cached_dir

    return AutoTokenizer.from_pretrained(cached_dir("smollm2-135m"))


# -- TL -> mechscope names ------------------------------------------------------------------------
def tl_to_mechscope(writer: str, reader: str) -> tuple[str, str]:
    """``("attn_head_out[0,3]", "k_input[1,2]") -> ("a0.h3", "a1.h2<k>")`` (see the module docstring)."""

    def parse(name: str) -> tuple[str, list[int]]:
        kind, _, rest = name.partition("[")
        return kind, [int(x) for x in rest.rstrip("]").split(",")] if rest else []

    kind, idx = parse(writer)
    src = {"embed": lambda: "input", "attn_head_out": lambda: f"a{idx[0]}.h{idx[1]}",
           "mlp_out": lambda: f"m{idx[0]}"}[kind]()
    kind, idx = parse(reader)
    if kind in ("q_input", "k_input", "v_input"):
        dst = f"a{idx[0]}.h{idx[1]}<{kind[0]}>"
    else:
        dst = {"mlp_in": lambda: f"m{idx[0]}", "logits": lambda: "logits"}[kind]()
    return src, dst


def align(peer: dict, scores: torch.Tensor, src_names: list[str], dst_names: list[str]
          ) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """TL's edge scores and mechscope's on TL's edges, as two ``[n_edges]`` float64 vectors;
    plus mechscope's real edges that TL lacks (should be none) as names."""
    src_at = {n: i for i, n in enumerate(src_names)}
    dst_at = {n: j for j, n in enumerate(dst_names)}
    ours, seen = [], set()
    for writer, reader in peer["edges"]:
        src, dst = tl_to_mechscope(writer, reader)
        if src not in src_at or dst not in dst_at:
            raise KeyError(f"TL edge {writer}->{reader} maps to {src}->{dst}, not in mechscope's graph")
        ours.append(float(scores[src_at[src], dst_at[dst]]))
        seen.add((src_at[src], dst_at[dst]))
    extra = [f"{src_names[i]}->{dst_names[j]}" for i, j in torch.nonzero(scores).tolist() if (i, j) not in seen]
    return peer["scores"].double(), torch.tensor(ours, dtype=torch.float64), extra


# -- measuring ------------------------------------------------------------------------------------
def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_rss_rise_mib(fn) -> tuple[object, float]:
    """``fn()``'s peak resident-memory rise over the process as it is now (MiB)."""
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS counter
    base = _rss_kib("VmRSS")
    out = fn()
    return out, (_rss_kib("VmHWM") - base) / 1024


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run_peer(folder: Path, pairs: dict, repeats: int, tmp: str) -> tuple[dict, dict] | None:
    if not PEERS.exists():
        print("(.venv-peers not found: run `make bench-peers` for the TransformerLens row)")
        return None
    torch.save(pairs, f"{tmp}/pairs.pt")
    run = subprocess.run([str(PEERS), str(PEER_SCRIPT), "--model", str(folder), "--pairs", f"{tmp}/pairs.pt",
                          "--out", f"{tmp}/peer.pt", "--repeats", str(repeats)],
                         capture_output=True, text=True, check=False, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if run.returncode != 0:
        print("TransformerLens row failed:", run.stderr[-2000:], file=sys.stderr)
        return None
    return torch.load(f"{tmp}/peer.pt", weights_only=False), json.loads(run.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="tiny GPT-2 (2 layers, d_model 64, 4 heads, vocab 97), 4 prompts x 8 tokens, 1 repeat")
    parser.add_argument("--task", choices=("random", "ioi"), default="random",
                        help="random token pairs (default) or IOI on the bundled tokenizer")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=16, help="prompt length (random task)")
    parser.add_argument("--vocab", type=int, default=8192, help="vocabulary (random task)")
    parser.add_argument("--corrupt-positions", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-peers", action="store_true", help="skip the TransformerLens row")
    parser.add_argument("--no-bundled", action="store_true", help="skip the bundled model's patched evaluations")
    args = parser.parse_args()
    if args.quick:
        args.layers, args.prompts, args.tokens, args.vocab, args.repeats = 2, 4, 8, 97, 1
        d_model, heads = 64, 4
    else:
        d_model, heads = 768, 12

    import mechscope as ms
    from mechscope.models.hardware import run_settings

    tokenizer = bundled_tokenizer() if args.task == "ioi" else None
    vocab = len(tokenizer) if tokenizer is not None else args.vocab
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "gpt2"
        build_model(folder, args.layers, d_model, heads, vocab, args.seed)
        model = ms.load(str(folder), tokenizer=tokenizer) if tokenizer is not None else ms.load(str(folder))
        model.eval()
        if args.task == "ioi":
            pairs = ioi_pairs(model, args.prompts)
        else:
            pairs = random_pairs(args.prompts, args.tokens, vocab, args.corrupt_positions, args.seed)
        n, length = pairs["clean"].shape
        tokens = n * length
        print(f"circuits benchmark: random GPT-2 ({args.layers} layers, d_model {d_model}, {heads} heads, vocab "
              f"{vocab}, seed {args.seed}), {args.task} {n} x {length} tokens, logit difference, "
              f"{run_settings(model.dtype)}\n")

        def forward():
            with torch.no_grad():
                return model(pairs["clean"])

        forward()
        forward_s = median_time(forward, max(args.repeats, 5))
        # exact comparison: pairs swapped (see the module docstring)
        swapped = (pairs["corrupted"], pairs["clean"], pairs["answers"], pairs["wrong"])
        print(f"{'method':34s} {'time s':>8s} {'x forward':>10s} {'peak MiB':>9s} {'KiB/token':>10s}")
        print(f"{'mechscope forward':34s} {forward_s:8.3f} {1.0:10.2f}")
        try:
            mechscope_eap_scores(model, *(t[:1] for t in swapped))  # warm-up
        except NotImplementedError as error:
            print(f"(mechscope EAP: {error})")
            scores = None
        else:
            (scores, src_names, dst_names), ms_peak = peak_rss_rise_mib(lambda: mechscope_eap_scores(model, *swapped))
            ms_s = median_time(lambda: mechscope_eap_scores(model, *swapped), args.repeats)
            hanna, _, _ = mechscope_eap_scores(model, pairs["clean"], pairs["corrupted"], pairs["answers"],
                                               pairs["wrong"])
            print(f"{'mechscope EAP':34s} {ms_s:8.3f} {ms_s / forward_s:10.2f} {ms_peak:9.1f} "
                  f"{ms_peak * 1024 / tokens:10.1f}   [target <= 3.5]")
            own_costs(model, pairs, forward_s, args.repeats)
            if not args.no_bundled and not args.quick:
                bundled_patched_costs(args.prompts, args.repeats)

        if args.no_peers:
            return
        got = run_peer(folder, pairs, args.repeats, tmp)
        if got is None:
            return
        peer, info = got
        print(f"{'TransformerLens forward':34s} {info['forward_s']:8.3f} {1.0:10.2f}")
        print(f"{'TransformerLens attribution_patch':34s} {info['eap_s']:8.3f} {info['eap_s'] / info['forward_s']:10.2f} "
              f"{info['peak_rss_mib']:9.1f} {info['peak_rss_mib'] * 1024 / tokens:10.1f}")
        print(f"\n{len(peer['edges'])} edges ({info['position_edges']} position-resolved in TL); "
              f"clean / corrupted metric {peer['clean_metric']:.4f} / {peer['corrupted_metric']:.4f}")
        if scores is None:
            return
        theirs, ours, extra = align(peer, scores, src_names, dst_names)
        r = torch.corrcoef(torch.stack([theirs, ours]))[0, 1]
        _, ours_hanna, _ = align(peer, hanna, src_names, dst_names)
        r_hanna = torch.corrcoef(torch.stack([-theirs, ours_hanna]))[0, 1]
        print(f"edge scores, pairs swapped (same quantity): Pearson r = {r:.6f}, max |diff| "
              f"{(theirs - ours).abs().max():.2e} (max |score| {theirs.abs().max():.2e})")
        print(f"edge scores, mechscope's own convention vs -TL (first order): Pearson r = {r_hanna:.4f}")
        if extra:
            print(f"mechscope scores {len(extra)} edges TL lacks, e.g. {extra[:3]}")
        print(f"time ratio TransformerLens / mechscope: {info['eap_s'] / ms_s:.2f}x; peak memory ratio "
              f"{info['peak_rss_mib'] / max(ms_peak, 1e-9):.2f}x")


if __name__ == "__main__":
    main()
