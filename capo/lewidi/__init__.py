"""The LeWiDi 2025 perspectivist track: prediction files, official scores, baselines, submission files, the
perspectivist encoder and the explainers as annotators (the split files are read by `capo.data.formats.lewidi`)."""
