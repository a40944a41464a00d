"""The bottom layer: facts and helpers every other layer may use, importing nothing from bireco above it."""
