"""The offline Qwen3 tokenizer build, loading, the chat prompt and the stop ids."""

import json
import shutil

import pytest

from stepgrpo_jax import tokenizer


def test_built_tokenizer_matches_qwen3_ids(qwen3_tokenizer_dir):
    tok = tokenizer.load(qwen3_tokenizer_dir)
    assert tok.encode("Wait, let me check. </think>", add_special_tokens=False) == [
        14190, 11, 1077, 752, 1779, 13, 220, 151668]
    assert tok.encode(" Wait", add_special_tokens=False) == [13824]
    assert tok.encode("\n\n", add_special_tokens=False) == [271]
    specials = tok.convert_tokens_to_ids(list(tokenizer.QWEN3_SPECIAL_TOKENS))
    assert specials == list(range(151643, 151669))
    assert tok.eos_token_id == 151645 and tok.pad_token_id == 151643


def test_round_trip_text(qwen3_tokenizer_dir):
    tok = tokenizer.load(qwen3_tokenizer_dir)
    text = "<think>\nLet x = 3½ · 2 — so x=7.\nWait, 3.5*2 = 7.</think>\n\n\\boxed{7} 数学"
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text


def test_chat_prompt_matches_official_layout(qwen3_tokenizer_dir):
    tok = tokenizer.load(qwen3_tokenizer_dir)
    expected = "<|im_start|>user\nWhat is 1+1?<|im_end|>\n<|im_start|>assistant\n"
    assert tokenizer.chat_prompt("What is 1+1?") == expected
    ids = tok.encode(tokenizer.chat_prompt("What is 1+1?"), add_special_tokens=False)
    assert ids[:3] == [151644, 872, 198]  # <|im_start|> user \n
    assert ids[-3:] == [151644, 77091, 198]  # <|im_start|> assistant \n
    assert tok.decode(ids) == expected
    # The template saved with the tokenizer writes the same ids.
    via_template = tok.apply_chat_template([{"role": "user", "content": "What is 1+1?"}],
                                           add_generation_prompt=True, tokenize=False)
    assert via_template == expected


def test_problem_prompt():
    prompt = tokenizer.problem_prompt("Solve x+1=2.")
    assert prompt.endswith("Solve x+1=2. Please reason step by step, and put your final answer "
                           "within \\boxed{}.<|im_end|>\n<|im_start|>assistant\n")


# Qwen2.5's template, cut to plain turns: a default system turn when the messages have none.
QWEN25_TEMPLATE = (
    "{%- if messages[0]['role'] != 'system' %}{{- '<|im_start|>system\\nYou are Qwen, created by "
    "Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def test_problem_prompt_follows_the_tokenizers_own_template(qwen3_tokenizer_dir):
    # A Qwen2.5 (or Llama 3) model is prompted the way it was tuned, system turn included, in
    # evaluation and training alike.
    tok = tokenizer.load(qwen3_tokenizer_dir)
    tok.chat_template = QWEN25_TEMPLATE
    expected = ("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
                "assistant.<|im_end|>\n<|im_start|>user\nSolve x+1=2." + tokenizer.PROMPT_SUFFIX
                + "<|im_end|>\n<|im_start|>assistant\n")
    assert tokenizer.problem_prompt("Solve x+1=2.", tok) == expected
    ids = tokenizer.encode_problem(tok, "Solve x+1=2.")
    assert ids == tok.encode(expected, add_special_tokens=False)
    assert tokenizer.problem_prompt_lengths(tok, ["Solve x+1=2.", "Hi"]) == [
        len(ids), len(tokenizer.encode_problem(tok, "Hi"))]


def test_problem_prompt_without_a_template_is_qwen3s_layout(qwen3_tokenizer_dir):
    tok = tokenizer.load(qwen3_tokenizer_dir)
    tok.chat_template = None
    assert tokenizer.problem_prompt("Solve x+1=2.", tok) == tokenizer.problem_prompt("Solve x+1=2.")


IM_END, ENDOFTEXT = 151645, 151643


def test_stop_ids_always_include_im_end(qwen3_tokenizer_dir, tmp_path):
    # A base checkpoint's tokenizer declares <|endoftext|> as EOS; ChatML still ends at <|im_end|>.
    tok = tokenizer.load(qwen3_tokenizer_dir)
    tok.eos_token = "<|endoftext|>"
    assert tok.eos_token_id == ENDOFTEXT
    assert tokenizer.stop_ids(tok) == (ENDOFTEXT, IM_END)
    assert tokenizer.stop_ids(tok, str(tmp_path)) == (ENDOFTEXT, IM_END)  # No generation config.


def test_stop_ids_read_every_eos_of_the_generation_config(qwen3_tokenizer_dir, tmp_path):
    tok = tokenizer.load(qwen3_tokenizer_dir)  # EOS <|im_end|>.
    assert tokenizer.stop_ids(tok) == (IM_END,)
    config = tmp_path / "generation_config.json"
    config.write_text(json.dumps({"eos_token_id": [IM_END, ENDOFTEXT, 151662]}))
    assert tokenizer.stop_ids(tok, str(tmp_path)) == (ENDOFTEXT, IM_END, 151662)
    config.write_text(json.dumps({"eos_token_id": ENDOFTEXT}))
    assert tokenizer.stop_ids(tok, str(tmp_path)) == (ENDOFTEXT, IM_END)


@pytest.mark.parametrize("tokenizer_class", ["Qwen2Tokenizer", "LlamaTokenizerFast",
                                             "PreTrainedTokenizerFast"])
def test_load_equals_the_model_class_that_autotokenizer_picks(qwen3_tokenizer_dir, tmp_path,
                                                              tokenizer_class):
    """What Qwen3 / Qwen2.5, R1-Distill-Qwen and Llama 3 name in tokenizer_config.json."""
    from transformers import AutoTokenizer

    folder = shutil.copytree(qwen3_tokenizer_dir, tmp_path / "tok")
    config_file = folder / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**config, "tokenizer_class": tokenizer_class}))
    ours = tokenizer.load(str(folder))
    theirs = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    texts = ["What is 3+5+9? 12345 ünïcödé 中文 😀", "  tabs\t\tand\n\nnewlines",
             "<think>\nWait, step by step: 3+5=8</think>\n\n\\boxed{19}<|im_end|>"]
    for text in texts:
        for special in (False, True):
            assert ours.encode(text, add_special_tokens=special) == theirs.encode(
                text, add_special_tokens=special)
    turn = [{"role": "user", "content": "What is 2+2?"}]
    assert ours.apply_chat_template(turn, add_generation_prompt=True, tokenize=False) == \
        theirs.apply_chat_template(turn, add_generation_prompt=True, tokenize=False)
    assert (ours.eos_token_id, ours.pad_token_id, ours.all_special_ids) == (
        theirs.eos_token_id, theirs.pad_token_id, theirs.all_special_ids)
    assert ours.get_vocab() == theirs.get_vocab()


def test_a_folder_without_tokenizer_json_is_named(tmp_path):
    (tmp_path / "tokenizer_config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=f"{tmp_path}: no tokenizer.json"):
        tokenizer.load(str(tmp_path))
