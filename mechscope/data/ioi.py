"""Indirect object identification (Wang et al. 2022) prompts with ABC corruption.

Templates are the fifteen of the paper (Figure 14) in BABA order, ``[B]`` the subject S and
``[A]`` the indirect object IO; the ABBA order swaps the first two names. The final
``[A]`` is the answer, not part of the prompt. The corruption replaces the three name
slots with three other distinct names (the paper's p_ABC), so the prompt keeps its
structure and length but no longer says who the indirect object is.
"""

from __future__ import annotations

import random

import torch

from ..errors import SelectionError
from ..models.tokens import single_token_words
from .tasks import PromptPairs, pairs_from_strings

BABA_TEMPLATES = (
    "Then, [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to [A]",
    "Then, [B] and [A] had a lot of fun at the [PLACE]. [B] gave a [OBJECT] to [A]",
    "Then, [B] and [A] were working at the [PLACE]. [B] decided to give a [OBJECT] to [A]",
    "Then, [B] and [A] were thinking about going to the [PLACE]. [B] wanted to give a [OBJECT] to [A]",
    "Then, [B] and [A] had a long argument, and afterwards [B] said to [A]",
    "After [B] and [A] went to the [PLACE], [B] gave a [OBJECT] to [A]",
    "When [B] and [A] got a [OBJECT] at the [PLACE], [B] decided to give it to [A]",
    "When [B] and [A] got a [OBJECT] at the [PLACE], [B] decided to give the [OBJECT] to [A]",
    "While [B] and [A] were working at the [PLACE], [B] gave a [OBJECT] to [A]",
    "While [B] and [A] were commuting to the [PLACE], [B] gave a [OBJECT] to [A]",
    "After the lunch, [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to [A]",
    "Afterwards, [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to [A]",
    "Then, [B] and [A] had a long argument. Afterwards [B] said to [A]",
    "The [PLACE] [B] and [A] went to had a [OBJECT]. [B] gave it to [A]",
    "Friends [B] and [A] found a [OBJECT] at the [PLACE]. [B] gave it to [A]",
)

NAMES = (
    "Mary", "John", "Alice", "Bob", "James", "Sarah", "Michael", "Emma", "David", "Laura", "Thomas", "Anna",
    "Daniel", "Kate", "Paul", "Lisa", "Mark", "Rachel", "Peter", "Julia", "George", "Helen", "Jack", "Sophie",
    "Henry", "Claire", "Ryan", "Grace", "Adam", "Rose", "Kevin", "Amy", "Steven", "Jane", "Brian", "Lucy",
    "Chris", "Ruth", "Simon", "Diana", "Frank", "Karen", "Luke", "Nancy", "Oscar", "Emily", "Victor", "Sam",
)
PLACES = ("store", "park", "school", "station", "office", "garden", "house", "market", "beach", "library",
          "hospital", "restaurant", "river", "church", "museum", "bank", "airport", "hotel", "farm", "cafe")
OBJECTS = ("drink", "book", "ring", "kiss", "bone", "basketball", "computer", "necklace", "letter", "snack",
           "ball", "bag", "card", "key", "phone", "hat", "flower", "cake", "box", "watch")


def ioi(model, n: int, *, template: int = 0, order: str = "mixed", seed: int = 0,
        prepend_bos: bool | None = None) -> PromptPairs:
    """``n`` IOI prompts of one template (so all share one token length) with ABC corruption.

    order: "BABA", "ABBA" or "mixed" (alternating). Names, places and objects that are not
    single tokens (with a leading space) for this tokenizer are skipped; a clear error is
    raised when too few remain.
    """
    if not 0 <= template < len(BABA_TEMPLATES):
        raise SelectionError(f"template must be in [0, {len(BABA_TEMPLATES)}), got {template}")
    if order not in ("BABA", "ABBA", "mixed"):
        raise SelectionError(f"order must be 'BABA', 'ABBA' or 'mixed', got {order!r}")
    if n < 1:
        raise SelectionError("need at least one prompt")
    tok = model.tokenizer
    names = single_token_words(tok, NAMES)
    places, objects = single_token_words(tok, PLACES), single_token_words(tok, OBJECTS)
    if len(names) < 5 or not places or not objects:
        raise SelectionError(
            f"too few single-token words for this tokenizer: {len(names)} names, {len(places)} places, "
            f"{len(objects)} objects (need 5, 1, 1)")
    rng = random.Random(seed)
    text = BABA_TEMPLATES[template].rsplit(" [A]", 1)[0]
    clean, corrupted, answers, wrong = [], [], [], []
    for i in range(n):
        io, s, x, y, z = rng.sample(names, 5)
        place, obj = rng.choice(places), rng.choice(objects)
        abba = order == "ABBA" or (order == "mixed" and i % 2 == 1)
        first, second = (io, s) if abba else (s, io)
        filled = text.replace("[PLACE]", place).replace("[OBJECT]", obj)
        clean.append(filled.replace("[B]", first, 1).replace("[A]", second, 1).replace("[B]", s))
        corrupted.append(filled.replace("[B]", x, 1).replace("[A]", y, 1).replace("[B]", z))
        answers.append(" " + io)
        wrong.append(" " + s)
    return pairs_from_strings(model, clean, corrupted, answers, wrong, prepend_bos=prepend_bos)


def ioi_positions(pairs: PromptPairs) -> dict[str, torch.Tensor]:
    """Each prompt's positions of the IOI template fields, for position-aware circuits: ``IO``
    (the indirect object's first mention), ``S1`` and ``S2`` (the subject's two mentions) and
    ``END`` (where the answer is predicted), each `[n]`. Read from the tokens: IO is the answer
    token, S the wrong-answer token (ms.data.ioi's single-token names)."""
    clean = pairs.clean
    io_at, s_at = clean == pairs.answers[:, None], clean == pairs.wrong[:, None]
    if not bool(io_at.any(1).all()) or not bool((s_at.sum(1) >= 2).all()):
        raise SelectionError("these are not IOI prompts: each needs its answer (IO) once and its wrong answer "
                             "(S) twice among its tokens")
    positions = torch.arange(clean.shape[1])
    first_io = torch.where(io_at, positions, clean.shape[1]).min(1).values
    first_s, last_s = torch.where(s_at, positions, clean.shape[1]).min(1).values, torch.where(s_at, positions, -1).max(1).values
    return {"IO": first_io, "S1": first_s, "S2": last_s, "END": pairs.answer_positions.clone()}
