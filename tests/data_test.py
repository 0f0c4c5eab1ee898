"""Problem files -> ArrayRecord -> host-sharded, resumable stream."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stepgrpo_jax import data


def _jsonl(path, rows):
    with open(path, "w") as f:
        for r in rows:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return str(path)


def _load(tmp_path, files, **kwargs):
    return data.load_problems(files, data_dir=str(tmp_path / "tfds"), **kwargs)


def test_math500_style_jsonl(tmp_path):
    rows = [{"problem": f"What is {i}+{i}?", "answer": str(2 * i), "level": 1} for i in range(7)]
    source, skipped = _load(tmp_path, [_jsonl(tmp_path / "m.jsonl", rows)])
    assert len(source) == 7 and skipped == []
    assert source[3] == data.Problem("What is 3+3?", "6", f"{tmp_path}/m.jsonl:4")


def test_gsm8k_style_answers(tmp_path):
    rows = [{"question": "Tom has 3 apples...", "answer": "3 + 1,000 = 1,003\n#### 1,003"}]
    fields = data.FieldMap(problem="question", answer="answer", answer_format="gsm8k")
    source, _ = _load(tmp_path, [_jsonl(tmp_path / "g.jsonl", rows)], fields=fields)
    assert source[0].answer == "1003"


def test_dapo_style_parquet(tmp_path):
    rows = [{"prompt": [{"role": "user", "content": f"Problem {i}"}],
             "reward_model": {"ground_truth": str(i), "style": "rule"}} for i in range(5)]
    path = str(tmp_path / "dapo.parquet")
    pq.write_table(pa.Table.from_pylist(rows), path)
    fields = data.FieldMap(problem="prompt.0.content", answer="reward_model.ground_truth")
    source, _ = _load(tmp_path, [path], fields=fields)
    assert [source[i].problem for i in range(5)] == [f"Problem {i}" for i in range(5)]
    assert source[4].answer == "4" and source[4].source.endswith("dapo.parquet:5")


def test_response_field_for_supervised_rows(tmp_path):
    rows = [{"problem": "p", "answer": "1", "response": "<think>\nx</think>\n\n\\boxed{1}"}]
    fields = data.FieldMap(response="response")
    source, _ = _load(tmp_path, [_jsonl(tmp_path / "s.jsonl", rows)], fields=fields)
    assert source[0].response == "<think>\nx</think>\n\n\\boxed{1}"


@pytest.mark.parametrize("bad_line, message", [
    ('{"problem": "p"}', "missing field 'answer'"),
    ('{"problem": "p", "answer": "  "}', "empty field 'answer'"),
    ('{"problem": "p", "answer": [1]}', "field 'answer' is a list"),
    ('{"problem": "p", "answer": ', "invalid JSON"),
])
def test_malformed_row_names_file_and_line(tmp_path, bad_line, message):
    path = _jsonl(tmp_path / "bad.jsonl", [{"problem": "a", "answer": "1"}, bad_line])
    with pytest.raises(data.DataError, match=rf"bad.jsonl:2: .*{message}"):
        _load(tmp_path, [path])


def test_bad_encoding_is_reported(tmp_path):
    path = tmp_path / "enc.jsonl"
    path.write_bytes(b'{"problem": "a", "answer": "1"}\n{"problem": "\xff\xfe", "answer": "2"}\n')
    with pytest.raises(data.DataError, match="enc.jsonl:2: bad encoding"):
        _load(tmp_path, [str(path)])


def test_skip_malformed_counts_rows(tmp_path):
    path = _jsonl(tmp_path / "mixed.jsonl", [{"problem": "a", "answer": "1"}, '{"problem": "b"}',
                                             {"problem": "c", "answer": "3"}])
    source, skipped = _load(tmp_path, [path], skip_malformed=True)
    assert len(source) == 2 and len(skipped) == 1 and "mixed.jsonl:2" in skipped[0]


def test_missing_file_and_wrong_extension(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such data file"):
        _load(tmp_path, [str(tmp_path / "nope.jsonl")])
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(ValueError, match="expected a .jsonl or .parquet"):
        _load(tmp_path, [str(tmp_path / "x.csv")])


def test_host_sharding_is_disjoint_and_complete(tmp_path):
    rows = [{"problem": f"p{i}", "answer": str(i)} for i in range(12)]
    source, _ = _load(tmp_path, [_jsonl(tmp_path / "d.jsonl", rows)])
    streams = [data.PromptStream(source, seed=3, process_index=h, process_count=3)
               for h in range(3)]
    epochs = [[p.problem for p in s.take(4)] for s in streams]
    flat = [x for e in epochs for x in e]
    assert sorted(flat) == sorted(f"p{i}" for i in range(12))  # Disjoint and complete.
    # The next epoch reshuffles each host's share but keeps the same share.
    again = [[p.problem for p in s.take(4)] for s in streams]
    assert [sorted(a) for a in again] == [sorted(e) for e in epochs]
    assert again != epochs


def test_stream_resumes_from_position(tmp_path):
    rows = [{"problem": f"p{i}", "answer": str(i)} for i in range(10)]
    source, _ = _load(tmp_path, [_jsonl(tmp_path / "d.jsonl", rows)])
    straight = data.PromptStream(source, seed=0)
    first, second = straight.take(7), straight.take(7)
    resumed = data.PromptStream(source, seed=0, position=7)
    assert resumed.take(7) == second and first != second
