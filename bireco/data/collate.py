"""Records -> padded tensors. Pure: returns a new dict; masks come from token spans, never token values."""

from __future__ import annotations

from collections import Counter

import torch

from bireco.model.text_format import TextFormat, encode_side, pad_sides


class PairCollator:
    """Tokenises query (with instruction), positive and up to `num_hard_negatives` negatives per record.

    Output: {"query", "positive", "negatives"?: side dicts (input_ids, attention_mask, instruction_mask,
    embed_mask), "negative_owner": (N,) query index of each negative, "dataset": list[str], "truncated": this
    batch's texts cut to their max length per kind}. `self.truncated` keeps the totals of this process.
    """

    def __init__(
        self,
        tokenizer,
        text_format: TextFormat,
        max_query_length: int,
        max_doc_length: int,
        padding_side: str = "left",
        num_hard_negatives: int = 1,
        pad_id: int | None = None,
    ):
        self.tokenizer = tokenizer
        self.fmt = text_format
        self.max_query_length = max_query_length
        self.max_doc_length = max_doc_length
        self.padding_side = padding_side
        self.num_hard_negatives = num_hard_negatives
        if pad_id is None:
            pad_id = (
                tokenizer.pad_token_id
                if tokenizer.pad_token_id is not None
                else text_format.eos_id(tokenizer)
            )
        self.pad_id = pad_id
        self.truncated: Counter = Counter()

    def encode_texts(
        self, texts: list[str], instruction: str | list[str] | None, max_length: int, kind: str
    ) -> dict:
        instructions = instruction if isinstance(instruction, list) else [instruction] * len(texts)
        # the instruction's own separator rule (TextFormat.for_instruction), as evaluation and export apply it
        sides = [
            encode_side(self.tokenizer, self.fmt.for_instruction(i or None), t, max_length, i or None)
            for t, i in zip(texts, instructions)
        ]
        self.truncated[kind] += sum(s.truncated for s in sides)
        return pad_sides(sides, self.pad_id, self.padding_side)

    def __call__(self, records: list[dict]) -> dict:
        before = dict(self.truncated)
        batch = {
            "query": self.encode_texts(
                [r["query"] for r in records],
                [r["instruction"] for r in records],
                self.max_query_length,
                "query",
            ),
            "positive": self.encode_texts(
                [r["positive"] for r in records], None, self.max_doc_length, "document"
            ),
            "dataset": [r["dataset"] for r in records],
        }
        negatives, owner = [], []
        for i, r in enumerate(records):
            for n in list(r.get("negatives") or [])[: self.num_hard_negatives]:
                negatives.append(n)
                owner.append(i)
        if negatives:
            batch["negatives"] = self.encode_texts(negatives, None, self.max_doc_length, "document")
            batch["negative_owner"] = torch.tensor(owner, dtype=torch.long)
        # this batch's counts travel with it: a DataLoader worker's own `truncated` never reaches the main process
        batch["truncated"] = {k: n - before.get(k, 0) for k, n in self.truncated.items()}
        return batch
