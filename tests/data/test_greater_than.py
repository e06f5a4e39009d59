"""Greater-than prompts and metric, with a digit tokenizer (SmolLM2/Llama style) and a
two-digit one (GPT-2 style) built in memory."""

from __future__ import annotations

import pytest
import torch
import transformers as tf
from tokenizers import Regex, Tokenizer, models, pre_tokenizers

import mechscope as ms
from mechscope.data.greater_than import greater_than, greater_than_prob_diff
from mechscope.errors import SelectionError

WORDS = ["The"] + [" " + w for w in ("war", "siege", "lasted", "from", "the", "year", "to")]
DIGITS = [str(d) for d in range(10)]
PAIRS = [f"{i:02d}" for i in range(100)]


def word_level(pattern: str, pieces: list[str]) -> tf.PreTrainedTokenizerFast:
    vocab = {"<s>": 0, "<unk>": 1}
    for piece in pieces:
        vocab.setdefault(piece, len(vocab))
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(pattern), behavior="isolated")
    return tf.PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", unk_token="<unk>")


TOKENIZERS = {
    # "1732" -> "1" "7" "3" "2", " 17" -> " " "1" "7"
    "digit": lambda: word_level(r" ?[A-Za-z]+|\d| ", WORDS + DIGITS + [" "]),
    # "1732" -> " 17" "32"
    "two_digit": lambda: word_level(r" ?[A-Za-z]+| ?\d\d|\d", WORDS + DIGITS + PAIRS + [" " + p for p in PAIRS]),
    "no_numbers": lambda: word_level(r" ?[A-Za-z]+|\d| ", WORDS + [" "]),
}


def text(tokenizer, ids: torch.Tensor) -> str:
    return "".join(tokenizer.convert_ids_to_tokens(ids.tolist()))


def hooked(kind: str, bos: bool = False) -> ms.HookedModel:
    tokenizer = TOKENIZERS[kind]()
    config = tf.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=len(tokenizer), n_positions=32,
                           bos_token_id=0, eos_token_id=0)
    return ms.HookedModel(tf.GPT2LMHeadModel(config), tokenizer, default_prepend_bos=bos)


@pytest.mark.parametrize("bos", [False, True])
@pytest.mark.parametrize("kind", ["digit", "two_digit"])
def test_prompts_align_and_differ_only_in_the_start_year(kind, bos):
    model = hooked(kind, bos)
    task = greater_than(model, 30, seed=3, nouns=("war", "siege"))
    pairs, n = task.pairs, 30
    assert task.mode == kind and len(task) == n
    length = (12 if kind == "two_digit" else 18) + bos
    assert pairs.clean.shape == pairs.corrupted.shape == (n, length)
    slot = torch.arange(7, 8) if kind == "two_digit" else torch.arange(9, 11)  # after "The war lasted from the year 17"
    assert torch.equal(task.year_positions, slot + bos)
    other = torch.ones(length, dtype=torch.bool)
    other[task.year_positions] = False
    assert torch.equal(pairs.clean[:, other], pairs.corrupted[:, other])
    tok = model.tokenizer
    for i in range(n):
        year, century = int(task.years[i]), int(task.centuries[i])
        assert 2 <= year <= 98 and 11 <= century <= 17 and task.nouns[i] in ("war", "siege")
        tail = "" if kind == "two_digit" else str(year // 10)
        assert pairs.clean_texts[i] == f"The {task.nouns[i]} lasted from the year {century}{year:02d} to the year {century}{tail}"
        assert pairs.corrupted_texts[i] == pairs.clean_texts[i].replace(f"{century}{year:02d}", f"{century}01", 1)
        assert text(tok, pairs.clean[i, bos:]) == pairs.clean_texts[i]
        assert text(tok, pairs.corrupted[i, bos:]) == pairs.corrupted_texts[i]
        assert text(tok, pairs.clean[i, task.year_positions]) == f"{year:02d}"
        assert text(tok, pairs.corrupted[i, task.year_positions]) == "01"
        if kind == "two_digit":
            assert text(tok, pairs.answers[i:i + 1]) == f"{year + 1:02d}"
            assert text(tok, pairs.wrong[i:i + 1]) == f"{year:02d}"
        else:
            assert year % 10 != 9
            assert text(tok, pairs.answers[i:i + 1]) == str(year % 10 + 1)
            assert text(tok, pairs.wrong[i:i + 1]) == str(year % 10)
    assert torch.equal(pairs.answer_positions, torch.full((n,), length - 1))
    assert len(set(zip(task.nouns, task.centuries.tolist(), task.years.tolist()))) == n  # no repeats
    again = greater_than(model, 30, seed=3, nouns=("war", "siege"))
    assert torch.equal(again.pairs.clean, pairs.clean)
    assert not torch.equal(greater_than(model, 30, seed=4, nouns=("war", "siege")).pairs.clean, pairs.clean)


def hand_prob_diff(task, logits: torch.Tensor) -> torch.Tensor:
    """The paper's P(end > YY) - P(end <= YY), one prompt and one candidate year at a time."""
    out = []
    for i in range(logits.shape[0]):
        year = int(task.years[i % len(task)])
        last = int(task.pairs.answer_positions[i % len(task)])
        probs = logits[i, last].softmax(-1)
        tokens = task.year_tokens.tolist()
        total = 0.0
        if task.mode == "two_digit":
            for end in range(100):
                total += float(probs[tokens[end]]) * (1 if end > year else -1)
        else:
            tens_probs = logits[i, last - 1].softmax(-1)
            for tens in range(10):
                if tens != year // 10:  # the tens digit decides
                    total += float(tens_probs[tokens[tens]]) * (1 if tens > year // 10 else -1)
                    continue
                for units in range(10):  # P(tens) * P(units | tens)
                    p = float(tens_probs[tokens[tens]]) * float(probs[tokens[units]])
                    total += p * (1 if units > year % 10 else -1)
        out.append(total)
    return torch.tensor(out)


@pytest.mark.parametrize("kind", ["digit", "two_digit"])
def test_metric_matches_a_hand_computation_and_tiles(kind):
    model = hooked(kind)
    task = greater_than(model, 8, seed=1, nouns=("war", "siege"))
    metric = greater_than_prob_diff(task)
    logits = torch.randn(8, task.pairs.clean.shape[1], len(model.tokenizer), generator=torch.Generator().manual_seed(0)) * 3
    torch.testing.assert_close(metric(logits, task.pairs), hand_prob_diff(task, logits), atol=1e-6, rtol=0)
    tiled = torch.cat([logits, logits.flip(0), logits])  # rows i and i + 8 are prompt i
    tiled_pairs = task.pairs.tile(3)
    torch.testing.assert_close(metric(tiled, tiled_pairs), hand_prob_diff(task, tiled), atol=1e-6, rtol=0)
    torch.testing.assert_close(metric(tiled, tiled_pairs)[16:], metric(logits))
    with pytest.raises(SelectionError, match=r"\[8, pos, vocab\]"):
        metric(logits[:7])
    with pytest.raises(SelectionError, match=r"\[24, pos, vocab\]"):
        metric(logits, tiled_pairs)


def one_hot_year(task, logits: torch.Tensor, row: int, tens: int, units: int | None = None) -> None:
    """Put (almost) all probability on one outcome at the answer position(s) of ``row``."""
    last = int(task.pairs.answer_positions[row])
    if task.mode == "two_digit":
        logits[row, last, task.year_tokens[tens * 10 + units]] = 50.0
    else:
        logits[row, last - 1, task.year_tokens[tens]] = 50.0
        if units is not None:
            logits[row, last, task.year_tokens[units]] = 50.0


@pytest.mark.parametrize("kind", ["digit", "two_digit"])
def test_metric_is_plus_or_minus_one_on_certain_years(kind):
    model = hooked(kind)
    task = greater_than(model, 4, seed=2, nouns=("war",))
    metric = greater_than_prob_diff(task)
    vocab, length = len(model.tokenizer), task.pairs.clean.shape[1]
    for row in range(4):
        year = int(task.years[row])
        y1 = year // 10
        for end, sign in [(year + 1, 1.0), (year, -1.0), (year - 1, -1.0)]:
            logits = torch.zeros(4, length, vocab)
            one_hot_year(task, logits, row, *divmod(end, 10))
            assert float(metric(logits)[row]) == pytest.approx(sign, abs=1e-6)
        if kind == "digit" and y1 < 9:  # a later tens digit is later whatever follows
            logits = torch.zeros(4, length, vocab)
            one_hot_year(task, logits, row, y1 + 1)
            assert float(metric(logits)[row]) == pytest.approx(1.0, abs=1e-6)
        if kind == "digit":  # the start year's tens digit followed by a non-digit: neither side
            logits = torch.zeros(4, length, vocab)
            logits[row, length - 2, task.year_tokens[y1]] = 50.0
            logits[row, length - 1, 2] = 50.0  # "The"
            assert float(metric(logits)[row]) == pytest.approx(0.0, abs=1e-6)


def test_clear_errors():
    model = hooked("digit")
    with pytest.raises(SelectionError, match="at least one prompt"):
        greater_than(model, 0)
    with pytest.raises(SelectionError, match="two-digit numbers"):
        greater_than(model, 4, centuries=[5])
    # 4 centuries x 88 years (02..98 without x9) x 1 noun: "civil war" is two tokens
    with pytest.raises(SelectionError, match=r"only 352 greater-than prompts qualify.*1 of 2 nouns.*1000 requested"):
        greater_than(model, 1000, nouns=("war", "civil war"), centuries=[17, 18, 19, 20])
    with pytest.raises(SelectionError, match="single token for every digit"):
        greater_than(hooked("no_numbers"), 4)
