"""Stage 1, data: one neutral schema, loaders for every vendored dataset, validity predicates, item-disjoint
splits and per-annotator histories, and the prompt formats every later stage shares."""
