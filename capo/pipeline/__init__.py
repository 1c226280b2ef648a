"""Stage 6, the pipeline: the whole study from one config (`recipes/pipeline.py`), each stage cached by signature,
a report folder at the end. It calls the stages' own library functions; nothing below it imports it."""
