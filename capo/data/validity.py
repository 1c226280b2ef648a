"""Validity predicates over one annotation on its item (VariErr round-2 peer votes).

Items from sources without validity votes (`item.validated` is False: LeWiDi VariErrNLI / Paraphrase) have nothing
to judge by, so every predicate accepts their annotations: all responses count as valid there.
"""

from __future__ import annotations

from collections.abc import Callable

from capo.data.schema import Annotation, Item

Predicate = Callable[[Item, Annotation], bool]


def own_vote(item: Item, annotation: Annotation) -> bool:
    """The author validated their own pair in round 2 (a missing own vote counts as not validated)."""
    return not item.validated or annotation.votes.get(annotation.annotator) is True


def peer_majority(item: Item, annotation: Annotation) -> bool:
    """Strictly more than half of the peers' (non-author) votes say the pair makes sense."""
    if not item.validated:
        return True
    peers = annotation.peer_votes()
    return sum(peers) * 2 > len(peers)


def unanimous(item: Item, annotation: Annotation) -> bool:
    """Every recorded vote says the pair makes sense, and the author's own vote is among them."""
    return not item.validated or (annotation.annotator in annotation.votes and all(annotation.votes.values()))


def not_error_label(item: Item, annotation: Annotation) -> bool:
    """The label is not among the item's `error_labels` (labels that disappeared after self-correction)."""
    return annotation.label not in item.error_labels


def not_self_corrected(item: Item, annotation: Annotation) -> bool:
    return not annotation.self_corrected


def all_of(*predicates: Predicate) -> Predicate:
    def combined(item: Item, annotation: Annotation) -> bool:
        return all(p(item, annotation) for p in predicates)

    combined.__name__ = "+".join(p.__name__ for p in predicates)
    return combined


def always(item: Item, annotation: Annotation) -> bool:
    return True


PREDICATES: dict[str, Predicate] = {
    "any": always,
    "own_vote": own_vote,
    "peer_majority": peer_majority,
    "unanimous": unanimous,
    "not_error_label": not_error_label,
    "not_self_corrected": not_self_corrected,
    # The default for rejected responses in CAPO pairs.
    "peer_majority_not_self_corrected": all_of(peer_majority, not_self_corrected),
}


def predicate(name: str) -> Predicate:
    """A predicate by name; names may be joined with '+' (all must hold)."""
    from capo.errors import DataError

    parts = name.split("+")
    unknown = [p for p in parts if p not in PREDICATES]
    if unknown:
        raise DataError(f"unknown validity predicate {unknown[0]!r} (valid: {', '.join(PREDICATES)})")
    return PREDICATES[name] if len(parts) == 1 else all_of(*(PREDICATES[p] for p in parts))
