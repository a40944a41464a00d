"""bireco: decoder LLMs -> text embedders via bidirectional reconstruction + contrastive learning."""

__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "encode":  # `bireco.encode(texts, checkpoint)`, imported lazily (torch/transformers are heavy)
        from bireco.model.encode import encode

        return encode
    raise AttributeError(name)
