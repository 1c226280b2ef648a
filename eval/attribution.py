"""Likelihood attribution of per-annotator explainers on held-out items (no judge needed).

    python eval/attribution.py --model models/corpus-lm \
        --adapter sft=runs/attr/seed{seed}/sft/{task}/{annotator} \
        --adapter capo=runs/attr/seed{seed}/capo/{task}/{annotator} \
        --seeds 0 1 2 [--splits dev test] [--exclude_pretrained true] [--output results/attribution.json] \
        [--scores_dir results/attribution_scores]

For every target annotator: the share of held-out comparisons in which the model scores the target's real
explanation above another annotator's (length-normalised log-likelihood), for the base model and each adapter kind,
the gain over base with a 95 % paired bootstrap interval over items, and a control (another annotator's model).
Held-out items follow the split recorded in the adapters' run manifests (`capo.data.heldout`); an item an adapter
trained on is refused, and so is an adapter without a run manifest (a hub adapter, a copied folder: what it trained
on is unknown) unless --allow_unchecked_adapters true, which the report then records (unchecked_adapters). Items the
base corpus LM was pre-trained on are counted and left out by default.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spinning OpenMP threads slow shared CPUs 10-25x

from capo.cli import parse_arguments, run_main
from capo.evaluate.behaviour.attribution import AttributionArguments, run_attribution


def parse(argv: list[str] | None = None) -> tuple[AttributionArguments]:
    return parse_arguments((AttributionArguments,), argv, prog="eval/attribution.py", description=__doc__)


@run_main
def main(argv: list[str] | None = None) -> dict:
    (args,) = parse(argv)
    return run_attribution(args)


if __name__ == "__main__":
    main()
