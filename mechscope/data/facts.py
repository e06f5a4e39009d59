"""Factual-recall prompts (subject -> attribute) for causal tracing and patching.

Three built-in relations with facts that have one uncontroversial answer: a country's
capital, a country's official language, and the city a landmark is in (landmarks whose
name contains their city are left out). ``fact_prompts`` turns them (and your own triples)
into `FactPrompt` objects with the subject's token positions, and keeps by default only the
facts the model gets right.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from ..errors import SelectionError
from ..models.hooked import HookedModel

CAPITALS = (
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Japan", "Tokyo"),
    ("Russia", "Moscow"), ("China", "Beijing"), ("Egypt", "Cairo"), ("Greece", "Athens"), ("Portugal", "Lisbon"),
    ("Austria", "Vienna"), ("Hungary", "Budapest"), ("Poland", "Warsaw"), ("Sweden", "Stockholm"),
    ("Norway", "Oslo"), ("Denmark", "Copenhagen"), ("Finland", "Helsinki"), ("Ireland", "Dublin"),
    ("the United Kingdom", "London"), ("England", "London"), ("Canada", "Ottawa"), ("Australia", "Canberra"),
    ("Argentina", "Buenos Aires"), ("Peru", "Lima"), ("Chile", "Santiago"), ("Colombia", "Bogota"),
    ("Venezuela", "Caracas"), ("Cuba", "Havana"), ("Kenya", "Nairobi"), ("Ethiopia", "Addis Ababa"),
    ("Thailand", "Bangkok"), ("Vietnam", "Hanoi"), ("South Korea", "Seoul"), ("Indonesia", "Jakarta"),
    ("the Philippines", "Manila"), ("Iran", "Tehran"), ("Iraq", "Baghdad"), ("Syria", "Damascus"),
    ("Lebanon", "Beirut"), ("Afghanistan", "Kabul"), ("Ukraine", "Kyiv"), ("the Czech Republic", "Prague"),
    ("Romania", "Bucharest"), ("Belgium", "Brussels"), ("Mexico", "Mexico City"),
)
LANGUAGES = (
    ("France", "French"), ("Germany", "German"), ("Italy", "Italian"), ("Spain", "Spanish"), ("Brazil", "Portuguese"),
    ("Portugal", "Portuguese"), ("Japan", "Japanese"), ("Russia", "Russian"), ("Greece", "Greek"),
    ("Turkey", "Turkish"), ("Poland", "Polish"), ("Sweden", "Swedish"), ("Norway", "Norwegian"),
    ("Denmark", "Danish"), ("the Netherlands", "Dutch"), ("Hungary", "Hungarian"), ("Argentina", "Spanish"),
    ("Colombia", "Spanish"), ("Chile", "Spanish"), ("Cuba", "Spanish"), ("Venezuela", "Spanish"),
    ("Israel", "Hebrew"), ("Iran", "Persian"), ("Thailand", "Thai"), ("Vietnam", "Vietnamese"),
    ("South Korea", "Korean"), ("Indonesia", "Indonesian"), ("Ukraine", "Ukrainian"),
    ("the Czech Republic", "Czech"), ("Romania", "Romanian"), ("Bulgaria", "Bulgarian"), ("Egypt", "Arabic"),
    ("Saudi Arabia", "Arabic"), ("Austria", "German"), ("Iceland", "Icelandic"), ("Croatia", "Croatian"),
    ("Serbia", "Serbian"), ("Lithuania", "Lithuanian"), ("Latvia", "Latvian"), ("Estonia", "Estonian"),
    ("Slovakia", "Slovak"), ("Albania", "Albanian"), ("Armenia", "Armenian"), ("Mongolia", "Mongolian"),
    ("Angola", "Portuguese"),
)
LANDMARKS = (
    ("the Eiffel Tower", "Paris"), ("the Louvre", "Paris"), ("the Arc de Triomphe", "Paris"),
    ("the Colosseum", "Rome"), ("the Trevi Fountain", "Rome"), ("the Pantheon", "Rome"), ("Big Ben", "London"),
    ("Buckingham Palace", "London"), ("Tower Bridge", "London"), ("Westminster Abbey", "London"),
    ("the Statue of Liberty", "New York"), ("the Empire State Building", "New York"),
    ("the Brooklyn Bridge", "New York"), ("Times Square", "New York"), ("the Golden Gate Bridge", "San Francisco"),
    ("the Space Needle", "Seattle"), ("the Hollywood Sign", "Los Angeles"), ("the Liberty Bell", "Philadelphia"),
    ("the Gateway Arch", "St. Louis"), ("the Brandenburg Gate", "Berlin"), ("the Kremlin", "Moscow"),
    ("Red Square", "Moscow"), ("the Forbidden City", "Beijing"), ("Tiananmen Square", "Beijing"),
    ("the Taj Mahal", "Agra"), ("the Acropolis", "Athens"), ("the Parthenon", "Athens"),
    ("the Sagrada Familia", "Barcelona"), ("the Prado Museum", "Madrid"), ("the Alhambra", "Granada"),
    ("Hagia Sophia", "Istanbul"), ("the Blue Mosque", "Istanbul"), ("the Burj Khalifa", "Dubai"),
    ("the Petronas Towers", "Kuala Lumpur"), ("the CN Tower", "Toronto"), ("Charles Bridge", "Prague"),
    ("the Rijksmuseum", "Amsterdam"), ("the Atomium", "Brussels"), ("the Uffizi Gallery", "Florence"),
    ("the Rialto Bridge", "Venice"), ("Christ the Redeemer", "Rio de Janeiro"), ("the Alamo", "San Antonio"),
)

# relation -> (templates with {} for the subject, (subject, attribute) pairs). A leading "the " is
# part of the prompt but not of the subject ("The Eiffel Tower is ..." has subject "Eiffel Tower").
RELATIONS: dict[str, tuple[tuple[str, ...], tuple[tuple[str, str], ...]]] = {
    "capital": (("The capital of {} is", "The capital city of {} is"), CAPITALS),
    "language": (("The official language of {} is", "In {}, the official language is"), LANGUAGES),
    "landmark": (("{} is located in the city of", "{} is in the city of"), LANDMARKS),
}


@dataclass
class FactPrompt:
    """One factual-recall prompt.

    tokens: `[pos]` the prompt's ids with the model's BOS convention (``model.to_tokens(text)[0]``).
    subject_positions: `[k]` the positions of the tokens that cover the subject, in order.
    attribute_token: the first token of ``" " + attribute`` (the word the prompt should be
      continued with); for a multi-token attribute ("Buenos Aires") only its first token is
      predicted and scored.
    """

    text: str
    subject: str
    attribute: str
    tokens: torch.Tensor
    subject_positions: torch.Tensor
    attribute_token: int
    relation: str = "custom"

    def __post_init__(self) -> None:
        self.tokens = _long_tensor(self.tokens, "fact.tokens")
        self.subject_positions = _long_tensor(self.subject_positions, "fact.subject_positions")


def _long_tensor(values, what: str) -> torch.Tensor:
    """``values`` (a sequence or tensor of ints) as a flat LongTensor; floats and bools are refused."""
    tensor = torch.as_tensor(values)
    if tensor.dtype == torch.bool or tensor.dtype.is_floating_point or tensor.dtype.is_complex:
        raise SelectionError(f"{what} must hold integers, got dtype {tensor.dtype}")
    if tensor.ndim != 1:
        raise SelectionError(f"{what} must be a flat sequence of ints, got shape {tuple(tensor.shape)}")
    return tensor.long()


def _encode(model: HookedModel, text: str) -> list[int]:
    return model.to_tokens(text)[0].tolist()


def make_fact(model: HookedModel, text: str, subject: str, attribute: str, relation: str = "custom") -> FactPrompt:
    """A `FactPrompt` for your own prompt; ``subject`` must occur in ``text`` (first occurrence
    is used) and start and end on token boundaries."""
    if not isinstance(attribute, str) or not attribute.strip():
        raise SelectionError(f"attribute must be a non-empty word (the prompt's expected continuation), "
                             f"got {attribute!r}")
    start = text.find(subject) if isinstance(subject, str) else -1
    if not subject or not subject.strip() or start < 0:
        raise SelectionError(f"subject {subject!r} does not occur in {text!r}")
    tokens = _encode(model, text)
    # Through the subject: the tokens of the text up to its end. Before it: those of the text up
    # to it, or, where the space before the subject belongs to its first token (" France" in
    # BPE vocabularies), of the text up to that space.
    through = _encode(model, text[:start + len(subject)])
    before = _encode(model, text[:start])
    if through[:len(before)] != before:
        before = _encode(model, text[:start].rstrip(" "))
    if tokens[:len(through)] != through or through[:len(before)] != before or len(through) == len(before):
        raise SelectionError(
            f"subject {subject!r} does not start and end on token boundaries of {text!r} "
            f"(tokens: {model.to_str_tokens(torch.tensor(tokens))})"
        )
    attribute_ids = model.tokenizer(" " + attribute.strip(), add_special_tokens=False)["input_ids"]
    if not attribute_ids:
        raise SelectionError(f"attribute {attribute!r} has no tokens")
    return FactPrompt(text, subject, attribute, torch.tensor(tokens), torch.arange(len(before), len(through)),
                      attribute_ids[0], relation)


def _model_knows(model: HookedModel, facts: list[FactPrompt]) -> list[bool]:
    """Whether the model's greedy next token is the attribute token; one forward per prompt length."""
    known = [False] * len(facts)
    by_length: dict[int, list[int]] = {}
    for i, fact in enumerate(facts):
        by_length.setdefault(len(fact.tokens), []).append(i)
    for rows in by_length.values():
        tokens = torch.stack([facts[i].tokens for i in rows])
        with torch.no_grad():
            logits = model(tokens, logits_at=torch.full((len(rows), 1), tokens.shape[1] - 1))[:, 0]
        for i, top in zip(rows, logits.argmax(-1).tolist()):
            known[i] = top == facts[i].attribute_token
    return known


def fact_prompts(model: HookedModel, relations: Sequence[str] = ("capital", "language", "landmark"), *,
                 facts: Iterable[tuple[str, str, str]] = (), known_only: bool = True,
                 template: int | None = 0) -> list[FactPrompt]:
    """Fact prompts of built-in ``relations`` (see `RELATIONS`) plus your own ``facts``
    ``(text, subject, attribute)`` triples.

    template: which template of each relation (0 = the first), or None for all of them.
    known_only: keep only facts whose attribute token is the model's greedy next token.
    Raises `SelectionError` for an unknown relation or template, or when no fact remains.
    """
    unknown = [r for r in relations if r not in RELATIONS]
    if unknown:
        raise SelectionError(f"unknown relation(s) {unknown}; built-in relations are {sorted(RELATIONS)}")
    prompts = []
    for relation in relations:
        templates, pairs = RELATIONS[relation]
        if template is not None and not 0 <= template < len(templates):
            raise SelectionError(f"relation {relation!r} has templates 0..{len(templates) - 1}, got {template}")
        chosen = templates if template is None else (templates[template],)
        for form in chosen:
            for name, attribute in pairs:
                text = form.format(name)
                text = text[0].upper() + text[1:]  # "the Eiffel Tower is ..." starts a sentence
                prompts.append(make_fact(model, text, name.removeprefix("the "), attribute, relation))
    prompts += [make_fact(model, text, subject, attribute) for text, subject, attribute in facts]
    if not prompts:
        raise SelectionError("no facts given: choose built-in relations or pass facts=[(text, subject, attribute)]")
    if known_only:
        prompts = [p for p, known in zip(prompts, _model_knows(model, prompts)) if known]
        if not prompts:
            raise SelectionError("the model's greedy next token is the attribute of none of the facts "
                                 "(use known_only=False to keep them anyway)")
    return prompts
