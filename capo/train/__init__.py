"""Stage 2, training: SFT rows and CAPO pairs, per-annotator explainers (TRL + PEFT LoRA), the packed
shared-prefix CAPO trainer, and the offline corpus LM."""
