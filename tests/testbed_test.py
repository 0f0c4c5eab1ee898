"""The overthinking testbed: problems, teacher traces, tokenizer, and the files it writes."""

import collections
import itertools
import json
import os
import re
import subprocess
import sys

import pytest

from stepgrpo_jax import grading, rewards, testbed, tokenizer

ALL_DIFFICULTIES = (1, 2, 3, 4)


@pytest.fixture(scope="module")
def testbed_dir(tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("testbed"))
    testbed.prepare(out, seed=0, n_train=600, n_eval=300, n_sft=600)
    return out


@pytest.fixture(scope="module")
def tok(testbed_dir):
    return tokenizer.load(os.path.join(testbed_dir, "tokenizer"))


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return testbed.make_sft_rows(4000, seed=7, difficulties=ALL_DIFFICULTIES)


def _read(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def _thinking(response: str) -> str:
    return response.partition("</think>")[0]


# ---------------------------------------------------------------------------------------------
# Problems and splits.
# ---------------------------------------------------------------------------------------------


def test_generation_is_deterministic_by_seed():
    assert testbed.make_problems(200, seed=3) == testbed.make_problems(200, seed=3)
    assert testbed.make_problems(200, seed=3) != testbed.make_problems(200, seed=4)
    assert testbed.make_sft_rows(50, seed=3) == testbed.make_sft_rows(50, seed=3)
    assert testbed.make_sft_rows(50, seed=3) != testbed.make_sft_rows(50, seed=4)


def test_problems_match_their_difficulty():
    problems = testbed.make_problems(800, seed=0, difficulties=ALL_DIFFICULTIES)
    assert len({p["problem"] for p in problems}) == len(problems)
    assert collections.Counter(p["difficulty"] for p in problems) == {d: 200 for d in
                                                                      ALL_DIFFICULTIES}
    for p in problems:
        terms = testbed.terms_of(p["problem"])
        assert p["problem"] == f"What is {'+'.join(map(str, terms))}?"
        assert p["answer"] == str(sum(terms))
        assert len(terms) == p["difficulty"] + 2 and all(1 <= t <= 9 for t in terms)
        assert len(set(terms)) == len(terms)  # Distinct: each term is found by its value.


def test_exclude_and_exhaustion():
    held_out = {p["problem"] for p in testbed.make_problems(200, seed=1, difficulties=(1,))}
    train = testbed.make_problems(250, seed=2, difficulties=(1,), exclude=held_out)
    assert not held_out & {p["problem"] for p in train}
    with pytest.raises(ValueError, match="too few difficulty-1 problems"):
        testbed.make_problems(505, seed=0, difficulties=(1,))  # 9 * 8 * 7 in all.


def test_prepare_writes_disjoint_splits(testbed_dir):
    train, held_out, sft = (_read(os.path.join(testbed_dir, f"{name}.jsonl"))
                            for name in ("train", "eval", "sft"))
    assert (len(train), len(held_out), len(sft)) == (600, 300, 600)
    eval_texts = {p["problem"] for p in held_out}
    assert len(eval_texts) == len(held_out)
    assert not eval_texts & {p["problem"] for p in train}
    assert not eval_texts & {p["problem"] for p in sft}
    assert set(train[0]) == {"problem", "answer", "difficulty"}
    assert {"problem", "answer", "difficulty", "response"} <= set(sft[0])


# ---------------------------------------------------------------------------------------------
# Teacher traces.
# ---------------------------------------------------------------------------------------------


def test_trace_step_counts_and_answers(rows):
    for r in rows:
        response = r["response"]
        assert r["steps"] == rewards.count_steps(response) == \
            1 + r["necessary"] + r["redundant"], response
        assert grading.answer_boxes(response)[-1:] == (r["answer"],)
        assert response.startswith("<think>\nThe sum is ") and response.endswith("<|im_end|>")
        first = testbed.first_answer(response)
        assert r["first_correct"] == (str(first) == r["answer"]) == (r["necessary"] == 0)
        if not r["first_correct"]:
            assert 1 <= abs(first - int(r["answer"])) <= 2  # A near miss.


def test_the_check_recomputes_and_the_answer_follows_it(rows):
    """The check recomputes the sum as running sums, whatever the first attempt said;
    re-checks restate the checked sum, which is the final answer. Only after a right first
    attempt may thinking close at once."""
    for r in rows:
        terms = testbed.terms_of(r["problem"])
        thinking = _thinking(r["response"])
        if r["steps"] == 1:
            assert r["first_correct"] and "Wait" not in thinking, r["response"]
            continue
        lines = thinking[thinking.index("Wait"):].split("\n")
        sums = [sum(terms[:i + 1]) for i in range(1, len(terms))]
        chain = f"{terms[0]}" + ", ".join(f"+{y}={z}" for y, z in zip(terms[1:], sums,
                                                                        strict=True))
        assert lines[0] == f"Wait, step by step: {chain}."
        rechecks = [line for line in lines[1:] if line.startswith("Wait")]
        assert len(rechecks) == r["steps"] - 2 <= testbed.MAX_RECHECKS
        assert all(re.findall(r"\d+", line) == [r["answer"]] for line in rechecks)


def test_commitment_closes_thinking_as_often_as_the_first_attempt_is_right(rows):
    """After the first attempt stated as the final answer (the probe's own text), thinking
    closes exactly when that attempt is right: what follows the box is calibrated, by
    difficulty, to the first attempt's chance of being right."""
    for d in ALL_DIFFICULTIES:
        closes = []
        for r in (r for r in rows if r["difficulty"] == d):
            first = testbed.first_answer(r["response"])
            commitment = f"The sum is {first}.\n{testbed.PROBE_PROMPT}{{{first}}}\n"
            if commitment in r["response"]:
                after = r["response"].split(commitment, 1)[1]
                assert after.startswith(("</think>", "Wait, step by step")), r["response"]
                assert after.startswith("</think>") == r["first_correct"]
                closes.append(after.startswith("</think>"))
        share = len(closes) / sum(r["difficulty"] == d for r in rows)
        expected = testbed.COMMIT * (1 - testbed.PLAIN_CLOSE)
        assert abs(share - expected) < 0.05, (d, share)
        assert abs(sum(closes) / len(closes) - (1 - testbed.first_slip_prob(d))) < 0.1, d
    right = [r for r in rows if r["first_correct"]]
    early = sum(r["steps"] == 1 for r in right) / len(right)
    assert abs(early - testbed.COMMIT) < 0.02


def test_first_attempt_fails_more_often_when_harder(rows):
    stats = testbed.summarize(rows)
    wrong = [stats[f"difficulty_{d}"]["first_wrong"] for d in ALL_DIFFICULTIES]
    assert wrong[0] == 0 and all(b > a + 0.15 for a, b in itertools.pairwise(wrong)), wrong


def test_redundant_habit(rows):
    checked = [r for r in rows if r["steps"] > 1]
    counts = collections.Counter(r["steps"] - 2 for r in checked)  # Re-checks per trace.
    assert set(counts) == set(range(testbed.MAX_RECHECKS + 1))
    assert min(counts.values()) > len(checked) / (testbed.MAX_RECHECKS + 1) * 0.8
    right_first = [r["redundant"] for r in rows if r["first_correct"]]
    expected = (1 - testbed.COMMIT) * (1 + testbed.MAX_RECHECKS / 2)
    assert abs(sum(right_first) / len(right_first) - expected) < 0.1


def test_probe_is_in_distribution(rows):
    """Steps start on a new line, so the DTR probe (or exit suffix) at a step boundary reads as
    the teacher's own closing."""
    closings = collections.Counter()
    for r in rows:
        thinking, response = _thinking(r["response"]), r["response"]
        assert all(thinking[m.start() - 1] == "\n" for m in re.finditer("Wait", thinking))
        probe_close = f"{testbed.PROBE_PROMPT}{{{r['answer']}}}{testbed.EXIT_SUFFIX}"
        plain_close = f".\n{testbed.EXIT_SUFFIX}"
        assert probe_close in response or plain_close in response
        closings[probe_close in response] += 1
    assert closings[True] > 0.7 * len(rows)


def test_first_answer():
    assert testbed.first_answer("<think>\nThe sum is 19.\nWait") == 19
    assert testbed.first_answer("<think>\nWait, step by step: 1+2=3.") is None
    assert testbed.first_answer("") is None


# ---------------------------------------------------------------------------------------------
# Tokenizer.
# ---------------------------------------------------------------------------------------------


def test_tokenizer_round_trips(tok, rows):
    texts = [tokenizer.problem_prompt(r["problem"]) + r["response"] for r in rows[:300]]
    texts += [testbed.PROBE_PROMPT, testbed.EXIT_SUFFIX, "Ünïcödé 数学\t\r\n  x\n\n\n", ""]
    for text in texts:
        assert tok.decode(tok.encode(text, add_special_tokens=False)) == text
    assert 300 <= len(tok) <= testbed.MAX_VOCAB


def test_tokenizer_units(tok):
    assert tok.convert_ids_to_tokens(tok.encode("Wait", add_special_tokens=False)) == ["Wait"]
    # Every number a running sum can reach is one token: a sum is one prediction.
    for n in range(41):  # Sums reach 9+8+7+6+5+4 = 39 (near misses at d <= 3: 37).
        assert len(tok.encode(f"={n},", add_special_tokens=False)) == 3, n
    for special in testbed.SPECIAL_TOKENS:
        assert len(tok.encode(special, add_special_tokens=False)) == 1
    assert tok.convert_ids_to_tokens(tok.encode("x<|im_end|></think>", add_special_tokens=False)
                                     )[1:] == ["<|im_end|>", "</think>"]
    assert (tok.eos_token, tok.pad_token) == ("<|im_end|>", "<|endoftext|>")
    assert tok.eos_token_id != tok.pad_token_id
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is 4 + 5?"
                                       + tokenizer.PROMPT_SUFFIX}],
                                     add_generation_prompt=True, tokenize=False)
    assert prompt == tokenizer.problem_prompt("What is 4 + 5?")


def test_probe_tokens_match_the_teachers_at_step_boundaries(tok, rows):
    """Appending the probe's (or exit suffix's) ids to a boundary prefix gives the ids of the
    text, so a probe is the same token sequence the model saw in the teacher's closings."""
    def ids(text):
        return tok.encode(text, add_special_tokens=False)

    boundaries = 0
    for r in rows[:300]:
        response = r["response"]
        for m in re.finditer("Wait", _thinking(response)):
            prefix = response[:m.start()]
            for suffix in (testbed.PROBE_PROMPT, testbed.EXIT_SUFFIX):
                assert ids(prefix) + ids(suffix) == ids(prefix + suffix)
            boundaries += 1
        # After an exit the sampler appends the suffix's ids; the answer then reads as taught.
        end = response.index(testbed.EXIT_SUFFIX) + len(testbed.EXIT_SUFFIX)
        assert ids(response[:end]) + ids(response[end:]) == ids(response)
    assert boundaries > 300


def test_tokenizer_build_is_deterministic(testbed_dir, tmp_path):
    again = testbed.build_tokenizer(str(tmp_path / "tok"), seed=0)
    with open(os.path.join(testbed_dir, "tokenizer", "tokenizer.json"), "rb") as f, \
            open(os.path.join(again, "tokenizer.json"), "rb") as g:
        assert f.read() == g.read()


def test_make_testbed_tool(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, os.path.join(root, "tools", "make_testbed.py"),
                          f"--out={tmp_path}", "--train=20", "--eval=10", "--sft=30"],
                         capture_output=True, text=True, check=True, cwd=root)
    report = json.loads(out.stdout)
    assert report["sft_stats"]["all"]["rows"] == 30 and report["sft_stats"]["all"]["tokens_mean"]
    for name in ("train.jsonl", "eval.jsonl", "sft.jsonl", "tokenizer/tokenizer.json"):
        assert os.path.exists(tmp_path / name)
