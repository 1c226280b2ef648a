"""One reader per source file format."""
