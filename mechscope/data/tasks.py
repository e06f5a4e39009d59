"""Clean/corrupted prompt pairs with answers: the input of every patching experiment."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..errors import SelectionError
from ..models.tokens import require_single_token
from .repeated import repeated_random_tokens


@dataclass
class PromptPairs:
    """Aligned clean and corrupted prompts.

    clean, corrupted: LongTensor `[n, pos]` of identical shape (position i means the same
      slot in both). answers, wrong: `[n]` token ids of the correct and the contrasting
      answer. answer_positions: `[n]` where the answer is predicted (default: last).
    prompt_index: `[n]` which original prompt each row is (``arange(n)``, until `tile` stacks
      copies: sweeps run ``k`` variants as ``k * n`` rows, variant-major, and metrics that
      compare rows with per-prompt data index it with ``prompt_index``).
    """

    clean: torch.Tensor
    corrupted: torch.Tensor
    answers: torch.Tensor
    wrong: torch.Tensor
    answer_positions: torch.Tensor | None = None
    clean_texts: list[str] | None = None
    corrupted_texts: list[str] | None = None
    prompt_index: torch.Tensor | None = None

    def __post_init__(self) -> None:
        self.clean, self.corrupted = _integers(self.clean, "clean prompts"), _integers(self.corrupted, "corrupted prompts")
        if self.clean.ndim != 2 or 0 in self.clean.shape:
            raise SelectionError(f"need a non-empty batch of non-empty prompts [n, pos], got shape "
                                 f"{tuple(self.clean.shape)}")
        if self.clean.shape != self.corrupted.shape:
            raise SelectionError(
                f"clean prompts {tuple(self.clean.shape)} and corrupted prompts {tuple(self.corrupted.shape)} "
                "differ in shape; patching needs each corrupted prompt to have its clean prompt's token length"
            )
        n, length = self.clean.shape
        self.answers, self.wrong = _integers(self.answers, "answers"), _integers(self.wrong, "wrong answers")
        if self.answers.shape != (n,) or self.wrong.shape != (n,):
            raise SelectionError(f"answers and wrong answers must be [n] = [{n}] token ids, got shapes "
                                 f"{tuple(self.answers.shape)} and {tuple(self.wrong.shape)}")
        if int(torch.cat([self.answers, self.wrong]).min()) < 0:
            raise SelectionError("answers and wrong answers must be token ids (>= 0)")
        if self.answer_positions is None:
            self.answer_positions = torch.full((n,), length - 1, dtype=torch.long)
        positions = _integers(self.answer_positions, "answer_positions")
        if positions.shape != (n,) or int(positions.min()) < -length or int(positions.max()) >= length:
            raise SelectionError(f"answer_positions must be [n] = [{n}] positions of prompts of {length} tokens "
                                 f"(negative ones count from the end), got {positions.tolist()}")
        self.answer_positions = positions % length
        if self.prompt_index is None:
            self.prompt_index = torch.arange(n)

    def tile(self, times: int) -> PromptPairs:
        """The pairs stacked ``times`` along the batch axis: `[times * n, ...]`, row ``v * n + i``
        is prompt ``i`` (of variant ``v``); ``prompt_index`` says which prompt each row is."""
        return PromptPairs(self.clean.repeat(times, 1), self.corrupted.repeat(times, 1), self.answers.repeat(times),
                           self.wrong.repeat(times), self.answer_positions.repeat(times),
                           prompt_index=self.prompt_index.repeat(times))

    def __len__(self) -> int:
        return self.clean.shape[0]


def _integers(values, what: str) -> torch.Tensor:
    """``values`` (a tensor or nested sequence of ints) as a LongTensor; floats and bools are refused."""
    tensor = torch.as_tensor(values)
    if tensor.dtype == torch.bool or tensor.dtype.is_floating_point or tensor.dtype.is_complex:
        raise SelectionError(f"{what} must be integer token ids or positions, got dtype {tensor.dtype}")
    return tensor.long()


def _texts(values: Sequence[str], what: str, *, blank: bool = False) -> list[str]:
    """``values`` as a list of non-empty strings, and unless ``blank`` not only whitespace (a
    lone string is not a list of prompts)."""
    if isinstance(values, str) or not isinstance(values, Sequence):
        raise SelectionError(f"{what} must be a list of strings, got {type(values).__name__} {values!r:.60}")
    values = list(values)
    bad = [v for v in values if not isinstance(v, str) or not (v if blank else v.strip())]
    if bad:
        raise SelectionError(f"{what} must be non-empty strings{'' if blank else ' (not only whitespace)'}, "
                             f"got {bad[0]!r}")
    return values


def pairs_from_strings(model, clean: Sequence[str], corrupted: Sequence[str], answers: Sequence[str],
                       wrong: Sequence[str], *, prepend_bos: bool | None = None) -> PromptPairs:
    """User-defined pairs. Each clean/corrupted pair must tokenize to the same length, all
    pairs to one length (use the same template), and answers must be single tokens.
    Every argument is a list of non-empty strings (`SelectionError` otherwise)."""
    clean, corrupted = _texts(clean, "clean prompts"), _texts(corrupted, "corrupted prompts")
    answers, wrong = _texts(answers, "answers", blank=True), _texts(wrong, "wrong answers", blank=True)
    if not clean:
        raise SelectionError("no prompts given")
    if not (len(clean) == len(corrupted) == len(answers) == len(wrong)):
        raise SelectionError("clean, corrupted, answers and wrong must have the same number of entries")
    tok = model.tokenizer
    rows_clean = [model.to_tokens(t, prepend_bos=prepend_bos)[0] for t in clean]
    rows_corrupt = [model.to_tokens(t, prepend_bos=prepend_bos)[0] for t in corrupted]
    for a, b, ta, tb in zip(rows_clean, rows_corrupt, clean, corrupted):
        if a.shape != b.shape:
            raise SelectionError(f"{ta!r} is {a.shape[0]} tokens but its corruption {tb!r} is {b.shape[0]}")
    if len({r.shape[0] for r in rows_clean}) != 1:
        raise SelectionError("prompts of different token lengths; keep one template per PromptPairs")
    return PromptPairs(
        torch.stack(rows_clean), torch.stack(rows_corrupt),
        torch.tensor([require_single_token(tok, a, "answer") for a in answers]),
        torch.tensor([require_single_token(tok, w, "answer") for w in wrong]),
        clean_texts=list(clean), corrupted_texts=list(corrupted),
    )


def induction_pairs(n: int, n_tokens: int = 20, *, low: int = 100, high: int = 20000, seed: int = 0) -> PromptPairs:
    """Repeated random tokens; the corruption replaces the first copy with other random tokens,
    so the answer (the next token of the second copy) is no longer available in context.
    The answer is predicted at the second-to-last position; ``wrong`` is the corrupted run's token there."""
    clean = repeated_random_tokens(n_tokens, batch=n, low=low, high=high, seed=seed)
    other = torch.randint(low, high, (n, n_tokens), generator=torch.Generator().manual_seed(seed + 1))
    corrupted = torch.cat([other, clean[:, n_tokens:]], dim=1)
    position = torch.full((n,), 2 * n_tokens - 2, dtype=torch.long)
    return PromptPairs(clean, corrupted, clean[:, -1].clone(), other[:, -1].clone(), answer_positions=position)
