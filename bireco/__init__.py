"""bireco: decoder LLMs -> text embedders via bidirectional reconstruction + contrastive learning."""

__version__ = "0.1.0"
