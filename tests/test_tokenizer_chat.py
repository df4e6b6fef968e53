"""The tokenizer round-trips text, and its chat template renders exactly what SFT and rollouts tokenize."""
from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from rlhf.data.chat import decode_response, encode_dialogue, encode_prompt, encode_prompt_response, encode_response
from rlhf.errors import RLHFError

SINGLE = [{"role": "user", "content": "What does Kalo do for a living?"},
          {"role": "assistant", "content": "Kalo is a baker."}]
MULTI = SINGLE + [{"role": "user", "content": "What is 3 plus 4?"},
                  {"role": "assistant", "content": "The answer is 7."}]
SYSTEM = [{"role": "system", "content": "Be brief."}] + SINGLE
DIALOGUES = [SINGLE, MULTI, SYSTEM, [{"role": "user", "content": "Hi"}]]


@pytest.mark.parametrize("text", ["Kalo is a baker.", "  leading spaces\n\nand blank lines\t",
                                  "Zürich — naïve café ☕ 日本語 🎉", "Human: hi\n\nAssistant: hello", ""])
def test_round_trip(tiny_tokenizer, text):
    ids = tiny_tokenizer.encode(text, add_special_tokens=False)
    assert tiny_tokenizer.decode(ids) == text


def test_special_tokens(tiny_tokenizer):
    tok = tiny_tokenizer
    assert tok.eos_token == "<|endoftext|>" and tok.pad_token == "<pad>"
    assert tok.eos_token_id != tok.pad_token_id
    assert tok.encode("Kalo", add_special_tokens=False)[-1] != tok.eos_token_id  # no EOS appended silently
    assert tok.encode("<|endoftext|>", add_special_tokens=False) == [tok.eos_token_id]


@pytest.mark.parametrize("messages", DIALOGUES, ids=["single", "multi", "system", "user-only"])
def test_chat_template_renders_what_encode_dialogue_tokenizes(tiny_tokenizer, messages):
    tok = tiny_tokenizer
    rendered = tok.apply_chat_template(messages, tokenize=False)
    ids, _ = encode_dialogue(tok, messages)
    assert tok.decode(ids) == rendered


@pytest.mark.parametrize("messages", [SINGLE[:1], MULTI[:3], SYSTEM[:2]], ids=["single", "multi", "system"])
def test_chat_template_generation_prompt_renders_what_encode_prompt_tokenizes(tiny_tokenizer, messages):
    tok = tiny_tokenizer
    rendered = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered.endswith("Assistant:")
    assert tok.decode(encode_prompt(tok, messages)) == rendered


def test_prompt_plus_response_is_the_trained_dialogue(tiny_tokenizer):
    """What the rollout engine samples (prompt, then ' text' + EOS) is token for token what SFT trains on."""
    tok = tiny_tokenizer
    ids, labels = encode_dialogue(tok, SINGLE)
    assert encode_prompt(tok, SINGLE[:1]) + encode_response(tok, SINGLE[1]["content"]) == ids
    assert encode_prompt_response(tok, SINGLE[:1], SINGLE[1]["content"], max_len=512) == ids
    assert decode_response(tok, encode_response(tok, "Kalo is a baker.")) == "Kalo is a baker."


def test_encode_prompt_accepts_a_string_and_rejects_an_assistant_ending(tiny_tokenizer):
    assert encode_prompt(tiny_tokenizer, "What is 3 plus 4?") == encode_prompt(
        tiny_tokenizer, [{"role": "user", "content": "What is 3 plus 4?"}])
    with pytest.raises(RLHFError, match="end with a user turn"):
        encode_prompt(tiny_tokenizer, SINGLE)
    with pytest.raises(RLHFError, match="messages must be"):
        encode_dialogue(tiny_tokenizer, [{"role": "robot", "content": "beep"}])


def test_saved_tokenizer_keeps_the_template(tmp_path, tiny_tokenizer):
    tiny_tokenizer.save_pretrained(tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    assert tok.apply_chat_template(MULTI, tokenize=False) == tiny_tokenizer.apply_chat_template(MULTI, tokenize=False)
    assert (tok.eos_token, tok.pad_token) == ("<|endoftext|>", "<pad>")
    assert tok.encode("Kalo is a baker.", add_special_tokens=False) == tiny_tokenizer.encode(
        "Kalo is a baker.", add_special_tokens=False)


def test_world_tokenizer_keeps_the_builtin_rendering_after_a_round_trip(tmp_path, tiny_tokenizer):
    """The world's tokenizer (and any tokenizer without a template) renders Human/Assistant segment by
    segment, also when loaded back from a saved folder; only other templates go through apply_chat_template."""
    from rlhf.data.chat import uses_model_template
    from rlhf.models.tokenizer import CHAT_TEMPLATE

    tiny_tokenizer.save_pretrained(tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    assert not uses_model_template(tiny_tokenizer) and not uses_model_template(tok)
    for messages in DIALOGUES:
        assert encode_dialogue(tok, messages) == encode_dialogue(tiny_tokenizer, messages)
    ids = encode_prompt(tok, SINGLE[:1]) + encode_response(tok, "Kalo is a baker.")
    expected = (tok.encode("Human: What does Kalo do for a living?\n\nAssistant:", add_special_tokens=False)
                + tok.encode(" Kalo is a baker.", add_special_tokens=False) + [tok.eos_token_id])
    assert ids == expected
    tok.chat_template = None
    assert not uses_model_template(tok) and encode_dialogue(tok, MULTI) == encode_dialogue(tiny_tokenizer, MULTI)
    tok.chat_template = CHAT_TEMPLATE.replace("Human:", "User:")
    assert uses_model_template(tok)


def test_decode_response_stops_at_the_first_eos(tiny_tokenizer):
    tok = tiny_tokenizer
    body = tok.encode(" Kalo is a baker.", add_special_tokens=False)
    assert decode_response(tok, body + [tok.eos_token_id] + [tok.pad_token_id] * 3) == "Kalo is a baker."
    assert decode_response(tok, body) == "Kalo is a baker."
