"""Dynamic padding, sequence packing (no attention across examples) and the resumable batch order."""

from __future__ import annotations

import pytest
import torch

from peftlab.data import IGNORE_INDEX, BatchLoader, TokenExample, collate, collate_packed, model_inputs, pack
from peftlab.data.encode import ClassificationExample
from peftlab.metrics import causal_lm_terms
from peftlab.models import build_model


def random_examples(count: int, seed: int, low: int = 3, high: int = 12) -> list[TokenExample]:
    generator = torch.Generator().manual_seed(seed)
    examples = []
    for _ in range(count):
        length = int(torch.randint(low, high, (1,), generator=generator))
        ids = torch.randint(0, 500, (length,), generator=generator).tolist()
        trained = torch.rand(length, generator=generator) < 0.6
        labels = [t if keep else IGNORE_INDEX for t, keep in zip(ids, trained.tolist(), strict=True)]
        examples.append(TokenExample(ids, labels))
    return examples


def test_collate_pads_right_and_masks_padding() -> None:
    examples = [TokenExample([5, 6, 7], [IGNORE_INDEX, 6, 7]), TokenExample([9], [9])]
    batch = collate(examples, pad_token_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [9, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE_INDEX, 6, 7], [9, IGNORE_INDEX, IGNORE_INDEX]]
    assert int(batch["num_tokens"]) == 4
    assert set(model_inputs(batch)) == {"input_ids", "attention_mask"}


def test_collate_classification_gives_one_label_per_sequence() -> None:
    batch = collate([ClassificationExample([1, 2], 1), ClassificationExample([3], 0)], pad_token_id=0)
    assert batch["labels"].tolist() == [1, 0]


def test_pack_fills_rows_without_exceeding_max_length() -> None:
    examples = random_examples(12, seed=0)
    rows = pack(examples, max_length=24)
    assert all(len(r.input_ids) <= 24 for r in rows)
    assert sum(len(r.input_ids) for r in rows) == sum(len(e.input_ids) for e in examples)
    for row in rows:
        starts = [i for i, p in enumerate(row.position_ids) if p == 0]
        assert all(row.labels[i] == IGNORE_INDEX for i in starts)
    with pytest.raises(ValueError, match="classification"):
        pack([ClassificationExample([1], 0)], 8)


@pytest.mark.parametrize("preset", ["tiny-llama", "tiny-gpt2"])
def test_packed_examples_do_not_attend_to_each_other(preset: str) -> None:
    """Logits of each example inside a packed row equal its logits when run alone."""
    model = build_model(preset, seed=0).eval()
    examples = random_examples(6, seed=1)
    rows = pack(examples, max_length=30)
    batch = collate_packed(rows, pad_token_id=0)
    with torch.no_grad():
        packed_logits = model(**model_inputs(batch)).logits
        cursor = {id(r): 0 for r in rows}
        position = 0
        row_index = 0
        for example in examples:
            row = rows[row_index]
            if cursor[id(row)] + len(example.input_ids) > len(row.input_ids):
                row_index += 1
                row = rows[row_index]
            start = cursor[id(row)]
            alone = model(input_ids=torch.tensor([example.input_ids])).logits[0]
            inside = packed_logits[row_index, start : start + len(example.input_ids)]
            torch.testing.assert_close(inside, alone, atol=1e-5, rtol=1e-4)
            cursor[id(row)] += len(example.input_ids)
            position += 1
    assert position == len(examples)


def test_packed_loss_equals_unpacked_loss() -> None:
    model = build_model("tiny-llama", seed=0).eval()
    examples = random_examples(5, seed=2)
    with torch.no_grad():
        padded = collate(examples, pad_token_id=0)
        plain = causal_lm_terms(model(**model_inputs(padded)).logits, padded["labels"])
        packed_batch = collate_packed(pack(examples, max_length=40), pad_token_id=0)
        packed = causal_lm_terms(model(**model_inputs(packed_batch)).logits, packed_batch["labels"])
    assert packed.count == plain.count
    assert float(packed.loss_sum) == pytest.approx(float(plain.loss_sum), rel=1e-5)


def test_loader_order_is_seeded_and_resumable_mid_epoch() -> None:
    items = list(range(10))
    loader = BatchLoader(items, batch_size=3, collate_fn=lambda chunk: {"ids": torch.tensor(chunk)}, seed=7)
    assert len(loader) == 4
    epoch0 = [b["ids"].tolist() for b in loader.batches(0)]
    assert sorted(i for batch in epoch0 for i in batch) == items
    assert epoch0 != [b["ids"].tolist() for b in loader.batches(1)]
    assert [b["ids"].tolist() for b in loader.batches(0, start=2)] == epoch0[2:]
    again = BatchLoader(items, batch_size=3, collate_fn=lambda chunk: {"ids": torch.tensor(chunk)}, seed=7)
    assert [b["ids"].tolist() for b in again.batches(0)] == epoch0
