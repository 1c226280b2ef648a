"""Soft-label fine-tuning: train a sequence-classification encoder on distributions, score it against ChaosNLI.

The MJD papers judge a distribution source (human or model) by fine-tuning a small encoder on the 341 VariErr items
with that source as soft labels (loss = soft cross-entropy), keeping the checkpoint with the best dev macro-F1, and
scoring the ChaosNLI test half once. `recipes/finetune.py` (one run) and `eval/finetune_compare.py` (the table) are
thin entry points over these modules, one job each:

- `arguments`: `FinetuneArguments`, the papers' `TrainingArguments` defaults, parsing a command line / YAML config.
- `data`: training sources (`chaosnli`, `varierr_dist`, `mnli_dist`, `mnli_onehot`, or a distribution JSONL over the
  341 items), ChaosNLI dev/test, hard-label NLI files (ANLI / MNLI format), tokenised datasets.
- `scoring`: the comparison metrics (`capo.evaluate.distributions.metrics`) on predictions, the constant predictors.
- `trainer`: the soft-label `Trainer`, the run signature that guards resumption, `finetune()` itself.
- `plots`: training curves.
- `comparison`: mean ± sd over seeds, constants, the verdict sentence, Markdown / CSV tables, and the runs
  behind them (`run_comparison`: one `recipes/finetune.py` process per source and seed).
"""
