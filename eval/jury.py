"""The explainer jury: each annotator's explainer's label probabilities, averaged into one distribution per item.

    python eval/jury.py --model models/smollm2-135m-instruct --explainers 'runs/sft/{task}/{annotator}' \
        --annotators A1 A2 A3 A4 --output runs/jury/sft.jsonl --human_output runs/jury/human_chaosnli.jsonl
    python eval/distributions.py --human runs/jury/human_chaosnli.jsonl --model runs/jury/sft.jsonl

Every label option follows the explainer's prompt and 'Label:' and is scored exactly (all its tokens) under the
annotator's adapter; the probabilities are softmaxed over the labels and averaged over the annotators. The output is
a distribution file ({"id", "distribution"}, [entailment, neutral, contradiction]) on the 341 ChaosNLI items by
default, which eval/distributions.py compares with the ChaosNLI HJD beside the MJDs (its table carries the constant
predictors on the same items: uniform, and label_prior, the mean ChaosNLI-dev HJD). A template without {annotator}
is one conditioned explainer, prompted with each annotator's id; without --explainers the base model alone answers
(the jury's baseline). How many items the explainers trained on (their run manifests) and the base model was
pre-trained on (a corpus LM) is printed and reported; --heldout_only true leaves out the former,
--exclude_pretrained true the latter (the report counts both among the items written: output_in_training,
output_in_base_pretraining). An explainer without a run manifest (a hub adapter, a copied folder) is refused, since
what it trained on can be neither counted nor left out, unless --allow_unchecked_adapters true (the report then
names it: unchecked_adapters).
--report also writes the report as JSON. Library: `capo.evaluate.distributions.jury.run_jury`.
"""

from __future__ import annotations

import json
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spinning OpenMP threads slow shared CPUs 10-25x

from capo.cli import parse_arguments, run_main
from capo.evaluate.distributions.jury import JuryArguments, run_jury


def parse(argv: list[str] | None = None) -> tuple[JuryArguments]:
    return parse_arguments((JuryArguments,), argv, prog="eval/jury.py", description=__doc__)


@run_main
def main(argv: list[str] | None = None) -> dict:
    (args,) = parse(argv)
    report = run_jury(args, log=lambda msg: print(msg, flush=True))
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
