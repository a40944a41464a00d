"""Assets built offline: the converted SmolLM2 (offline_lm), the tiny test LM and its tokenizer."""
