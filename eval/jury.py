"""The explainer jury: each annotator's explainer's label probabilities, averaged into one distribution per item.

    python eval/jury.py --model models/smollm2-135m-instruct --explainers 'runs/sft/{task}/{annotator}' \
        --annotators A1 A2 A3 A4 --output runs/jury/sft.jsonl --human_output runs/jury/human_chaosnli.jsonl
    python eval/distributions.py --human runs/jury/human_chaosnli.jsonl --model runs/jury/sft.jsonl

Every label option follows the explainer's prompt and 'Label:' and is scored exactly (all its tokens) under the
annotator's adapter; the probabilities are softmaxed over the labels and averaged over the annotators. The output is
a distribution file ({"id", "distribution"}, [entailment, neutral, contradiction]) on the 341 ChaosNLI items by
default, which eval/distributions.py compares with the ChaosNLI HJD beside the MJDs. A template without {annotator}
is one conditioned explainer, prompted with each annotator's id; without --explainers the base model alone answers
(the jury's baseline). How many items the explainers trained on (their run manifests) and the base model was
pre-trained on (a corpus LM) is printed and reported; --heldout_only true leaves out the former, --exclude_pretrained
true the latter. An explainer without a run manifest (a hub adapter, a copied folder) is refused, since what it
trained on can be neither counted nor left out, unless --allow_unchecked_adapters true (the report then names it:
unchecked_adapters). Library: capo/lewidi/explainers.py.
"""

from __future__ import annotations

import json
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spinning OpenMP threads slow shared CPUs 10-25x

from capo.cli import ArgumentParser, run_main
from capo.data.schema import ANNOTATORS
from capo.errors import DataError
from capo.evaluate.distributions.jury import run_jury
from capo.io import write_json


def _flag(text: str, name: str) -> bool:
    if text.lower() not in ("true", "false"):
        raise DataError(f"expected true or false, got {text!r}", field=name)
    return text.lower() == "true"


@run_main
def main(argv: list[str] | None = None) -> dict:
    parser = ArgumentParser(prog="eval/jury.py", description=__doc__)
    parser.add_argument("--model", required=True, help="base model (hub id or folder)")
    parser.add_argument("--explainers", help="adapter folder template with {task} (nli) and {annotator} (A1..A4), "
                                             "e.g. runs/sft/{task}/{annotator}; without {annotator}: one "
                                             "conditioned adapter; omitted: the base model alone")
    parser.add_argument("--annotators", nargs="+", default=list(ANNOTATORS), help="the jury's members")
    parser.add_argument("--output", required=True, help="jury distribution JSONL to write")
    parser.add_argument("--dataset", default="nli341", help="a shipped data set name or a file (default: the 341 "
                                                            "ChaosNLI items)")
    parser.add_argument("--heldout_only", default="false", help="true: leave out items an explainer trained on")
    parser.add_argument("--exclude_pretrained", default="false",
                        help="true: leave out items the base corpus LM was pre-trained on (their count is reported)")
    parser.add_argument("--human_output", help="also write the same items' ChaosNLI HJD (for eval/distributions.py)")
    parser.add_argument("--allow_unchecked_adapters", default="false",
                        help="true: use explainers without a run manifest (their training items are neither counted "
                             "nor left out; the report names them)")
    parser.add_argument("--report", help="also write the report as JSON")
    parser.add_argument("--dtype", default="float32", help="float32, bfloat16, float16 or auto")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--min_shared_tokens", type=int, default=16,
                        help="shortest prompt prefix the scorer's KV cache shares (0: every prompt scored whole)")
    args = parser.parse_args(argv)
    if args.report:
        from capo.io import check_output

        check_output(args.report)
    report = run_jury(args.model, args.output, explainers=args.explainers, annotators=args.annotators,
                      dataset=args.dataset, heldout_only=_flag(args.heldout_only, "heldout_only"),
                      exclude_pretrained=_flag(args.exclude_pretrained, "exclude_pretrained"),
                      human_output=args.human_output, dtype=args.dtype, batch_size=args.batch_size,
                      min_shared_tokens=args.min_shared_tokens,
                      allow_unchecked_adapters=_flag(args.allow_unchecked_adapters, "allow_unchecked_adapters"),
                      log=lambda msg: print(msg, flush=True))
    print(json.dumps(report, indent=2))
    if args.report:
        write_json(args.report, report)
    return report


if __name__ == "__main__":
    main()
