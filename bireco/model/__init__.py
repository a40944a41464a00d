"""The embedder itself: a causal LM used as encoder and decoder (backbone), how it is loaded and saved, its text
format and pooling, Stage I's anchor path, and encoding texts."""
