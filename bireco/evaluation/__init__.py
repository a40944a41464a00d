"""Measuring an embedder: mteb runs on the built-in and named tasks, the mteb encoder wrapper, reference rows,
retrieval metrics, the in-training dev check and the anchor diagnostics (is a Stage I reading its anchor?)."""
