"""SFT label masking: prompt tokens are ignored, assistant tokens and their EOS are trained."""
from __future__ import annotations

import pytest
import torch

from rlhf.data.chat import IGNORE, encode_dialogue
from rlhf.errors import RLHFError
from rlhf.train.sft import SFTConfig, _to_messages, collate, load_dialogues, response_loss


def _spans(labels):
    """Maximal runs of trained positions as (start, end) index pairs."""
    spans, start = [], None
    for i, y in enumerate(labels + [IGNORE]):
        if y != IGNORE and start is None:
            start = i
        elif y == IGNORE and start is not None:
            spans.append((start, i))
            start = None
    return spans


def test_single_turn_masking(tiny_tokenizer):
    tok = tiny_tokenizer
    messages = [{"role": "user", "content": "What is 3 plus 4?"}, {"role": "assistant", "content": "The answer is 7."}]
    ids, labels = encode_dialogue(tok, messages)
    assert len(ids) == len(labels)
    prompt_len = len(tok.encode("Human: What is 3 plus 4?\n\nAssistant:", add_special_tokens=False))
    assert labels[:prompt_len] == [IGNORE] * prompt_len
    assert labels[prompt_len:] == ids[prompt_len:]  # the answer and its EOS are all trained
    assert ids[-1] == tok.eos_token_id and labels[-1] == tok.eos_token_id
    assert tok.decode(ids[prompt_len:-1]) == " The answer is 7."


def test_multi_turn_masking(tiny_tokenizer):
    tok = tiny_tokenizer
    messages = [{"role": "user", "content": "What does Kalo do for a living?"},
                {"role": "assistant", "content": "Kalo is a baker."},
                {"role": "user", "content": "Where does Kalo live?"},
                {"role": "assistant", "content": "I don't know."}]
    ids, labels = encode_dialogue(tok, messages)
    spans = _spans(labels)
    assert len(spans) == 2
    trained = [tok.decode(ids[a:b]) for a, b in spans]
    assert trained == [" Kalo is a baker.<|endoftext|>", " I don't know.<|endoftext|>"]
    untrained = tok.decode([i for i, y in zip(ids, labels) if y == IGNORE])
    assert untrained == ("Human: What does Kalo do for a living?\n\nAssistant:"
                         "\n\nHuman: Where does Kalo live?\n\nAssistant:")
    for a, b in spans:
        assert labels[a:b] == ids[a:b]


def test_truncation_keeps_ids_and_labels_aligned(tiny_tokenizer):
    messages = [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "word " * 50}]
    ids, labels = encode_dialogue(tiny_tokenizer, messages, max_len=16)
    assert len(ids) == len(labels) == 16


def test_collate_pads_inputs_and_ignores_padding(tiny_tokenizer):
    tok = tiny_tokenizer
    a = encode_dialogue(tok, [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}])
    b = encode_dialogue(tok, [{"role": "user", "content": "What is 3 plus 4?"},
                              {"role": "assistant", "content": "The answer is 7, I am quite sure."}])
    batch = collate([a, b], tok.pad_token_id)
    n = len(a[0])
    assert batch["input_ids"].shape == batch["labels"].shape == (2, len(b[0]))
    assert (batch["input_ids"][0, n:] == tok.pad_token_id).all()
    assert (batch["labels"][0, n:] == IGNORE).all()
    assert batch["attention_mask"][0].tolist() == [1] * n + [0] * (len(b[0]) - n)
    assert batch["attention_mask"][1].all()


def test_response_loss_counts_only_trained_positions():
    vocab = 5
    labels = torch.tensor([[IGNORE, IGNORE, 3, 4, IGNORE]])
    logits = torch.randn(1, 5, vocab)
    # position t predicts label t + 1: positions 1 and 2 predict tokens 3 and 4
    expected = torch.nn.functional.cross_entropy(logits[0, [1, 2]], torch.tensor([3, 4]))
    assert response_loss(logits, labels).item() == pytest.approx(expected.item())
    noise = logits.clone()
    noise[0, [0, 3, 4]] = torch.randn(3, vocab) * 100  # positions predicting ignored labels do not matter
    assert response_loss(noise, labels).item() == pytest.approx(expected.item())


def test_data_formats(tiny_tokenizer):
    msgs = _to_messages({"prompt": "Hi", "completion": "Hello."}, "x:1")
    assert msgs == [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]
    msgs = _to_messages({"text": "Human: Hi\nAssistant: Hello.\nHuman: Bye\nAssistant: Bye."}, "x:1")
    assert [m["role"] for m in msgs] == ["user", "assistant", "user", "assistant"]
    with pytest.raises(RLHFError, match="x:7: dialogue has no assistant turn"):
        _to_messages({"messages": [{"role": "user", "content": "Hi"}]}, "x:7")
    with pytest.raises(RLHFError, match="x:2: expected 'messages'"):
        _to_messages({"question": "Hi"}, "x:2")


def test_load_dialogues_reports_file_and_line(tmp_path, tiny_world):
    path = tmp_path / "data.jsonl"
    path.write_text('{"prompt": "Hi", "completion": "Hello."}\n\n{"prompt": "Hi", "answer": "Hello."}\n')
    with pytest.raises(RLHFError, match=r"data.jsonl:3: expected 'messages'"):
        load_dialogues(SFTConfig(data=str(path)))


def test_dialogue_filter_drops_non_dialogues(tmp_path, tiny_world):
    path = tmp_path / "data.jsonl"
    chat = "\n".join(f"{'A' if i % 2 == 0 else 'B'}: line {i}" for i in range(6))
    path.write_text(f'{{"text": {chat!r}}}\n'.replace("'", '"') + '{"text": "Just prose: not a dialogue at all."}\n')
    dialogues, dropped = load_dialogues(SFTConfig(data=str(path), dialogue_filter=True))
    assert dropped == 1 and len(dialogues) == 1
    assert [m["role"] for m in dialogues[0]] == ["user", "assistant"] * 3
