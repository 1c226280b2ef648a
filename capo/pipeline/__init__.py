"""The pipeline: the whole study from one config (`recipes/pipeline.py`), each stage launching the entry points it
quotes and cached by signature, a report folder at the end; nothing below it imports it."""
