"""Head detectors: exact masks, brute-force scores, and a hand-forced pattern."""

from __future__ import annotations

import torch

from mechscope.analysis.heads import detection_masks, head_scores
from mechscope.data.repeated import repeated_random_tokens


def _marked(mask, b, q):
    return set(torch.nonzero(mask[b, q]).flatten().tolist())


def test_masks_on_a_hand_made_sequence():
    tokens = torch.tensor([[5, 6, 7, 5, 6, 5]])
    masks = detection_masks(tokens)
    assert _marked(masks["previous_token"], 0, 4) == {3}
    assert _marked(masks["first_token"], 0, 0) == set() and _marked(masks["first_token"], 0, 3) == {0}
    assert _marked(masks["duplicate_token"], 0, 5) == {0, 3}
    assert _marked(masks["induction"], 0, 3) == {1}  # token 5 seen at 0, followed by key 1
    assert _marked(masks["induction"], 0, 5) == {1, 4}  # 5 seen at 0 and 3
    assert _marked(masks["induction"], 0, 2) == set()


def test_scores_equal_a_brute_force_loop(tiny):
    model = tiny.model
    tokens = repeated_random_tokens(5, batch=2, low=3, high=97, seed=3)
    result = head_scores(model, tokens)
    _, cache = model.run_with_cache(tokens, "blocks.*.attn.pattern")
    n = tokens.shape[1]
    for layer in range(model.cfg.n_layers):
        pattern = cache[f"blocks.{layer}.attn.pattern"]
        for head in range(model.cfg.n_heads):
            prev, ind, count = 0.0, 0.0, 0
            for b in range(2):
                for q in range(1, n):
                    prev += pattern[b, head, q, q - 1].item()
                    keys = [k for k in range(1, q) if tokens[b, k - 1] == tokens[b, q]]
                    if keys:
                        ind += sum(pattern[b, head, q, k].item() for k in keys)
                        count += 1
            assert abs(result.scores["previous_token"][layer, head] - prev / (2 * (n - 1))) < 1e-5
            assert abs(result.scores["induction"][layer, head] - ind / count) < 1e-5


def test_forced_previous_token_pattern_scores_one(tiny):
    model = tiny.model
    n = tiny.tokens.shape[1]
    forced = torch.zeros(n, n)
    forced[0, 0] = 1
    forced[torch.arange(1, n), torch.arange(n - 1)] = 1
    with model.hooks({"blocks.0.attn.pattern": lambda p, ctx: forced.expand_as(p).clone()}):
        result = head_scores(model, tiny.tokens, custom={"diagonal": torch.eye(n, dtype=torch.bool)})
    assert torch.allclose(result.scores["previous_token"][0], torch.ones(model.cfg.n_heads))
    assert torch.allclose(result.scores["diagonal"][0], torch.full((model.cfg.n_heads,), 1 / n))  # only query 0
    assert result.top(1, kind="previous_token")["layer"].iloc[0] == 0
    frame = result.to_dataframe()
    assert list(frame.columns) == ["kind", "layer", "head", "score"] and {"induction", "diagonal"} <= set(frame.kind)


def test_average_all_divides_by_every_query(tiny):
    tokens = repeated_random_tokens(6, batch=2, low=3, high=97, seed=5)
    marked = head_scores(tiny.model, tokens, ("induction",))
    every = head_scores(tiny.model, tokens, ("induction",), average="all")
    queries_with_target = detection_masks(tokens, ("induction",))["induction"].any(-1).sum().item()
    ratio = queries_with_target / tokens.numel()
    torch.testing.assert_close(every.scores["induction"], marked.scores["induction"] * ratio, atol=1e-6, rtol=0)
