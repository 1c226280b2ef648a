"""The study's committed slices and the report made from them."""
