"""Training: SFT rows and CAPO pairs, per-annotator explainers (TRL + PEFT LoRA), and the packed shared-prefix CAPO
trainer."""
