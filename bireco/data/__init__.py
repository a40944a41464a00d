"""Training pairs: reading and checking records, instruction tables, the built-in pair sets, batching and
collation."""
