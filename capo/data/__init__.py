"""Data: one neutral schema, a reader per source format and the registry of shipped data sets, validity predicates,
item-disjoint splits, adapters' training records and held-out selection, and the prompt formats every later layer
shares."""
