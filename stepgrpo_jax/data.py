"""Problems with reference answers: local JSONL / Parquet files -> TFDS ArrayRecord -> a
shuffled, host-sharded stream whose position is a single integer (saved in checkpoints).

Field names are dotted paths, so DAPO-Math-17k (`prompt.0.content`, `reward_model.ground_truth`),
GSM8K (`question`, `answer` with `answer_format="gsm8k"`: the text after `####`) and MATH-500
(`problem`, `answer`) style files all work. Preparation runs once per set of files (the build is
keyed by the files' paths, sizes and modification times and by the field mapping).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import grain
import jax
import numpy as np
import tensorflow_datasets as tfds

ANSWER_FORMATS = ("plain", "gsm8k")


@dataclasses.dataclass(frozen=True)
class Problem:
    problem: str
    answer: str
    source: str  # "file:line", for error messages and evaluation reports.
    response: str = ""  # A reference response (supervised warm start), when mapped.


@dataclasses.dataclass(frozen=True)
class FieldMap:
    problem: str = "problem"
    answer: str = "answer"
    answer_format: str = "plain"  # "gsm8k": the reference answer is the text after "####".
    response: str = ""  # Field of a reference response, for supervised training ("": none).

    @classmethod
    def from_config(cls, data: Mapping[str, Any]) -> FieldMap:
        """The fields of a `config.data` section named like this class's."""
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})


class DataError(ValueError):
    """A malformed input row; the message names file and line."""


def _field(row: Any, path: str) -> Any:
    for part in path.split("."):
        if isinstance(row, dict) and part in row:
            row = row[part]
        elif isinstance(row, (list, tuple, np.ndarray)) and part.isdigit() and \
                int(part) < len(row):
            row = row[int(part)]
        else:
            raise KeyError(path)
    return row


def _rows(path: str) -> Iterator[tuple[int, Any]]:
    """(line or row number from 1, parsed row or the exception that spoiled it)."""
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        for i, row in enumerate(pq.read_table(path).to_pylist(), 1):
            yield i, row
        return
    with open(path, "rb") as f:
        for i, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                yield i, json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                yield i, e


def parse_row(row: Any, fields: FieldMap) -> tuple[str, str, str]:
    """(problem, answer, response) of one parsed row; raises ValueError saying what is wrong."""
    if isinstance(row, Exception):
        kind = "bad encoding" if isinstance(row, UnicodeDecodeError) else "invalid JSON"
        raise ValueError(f"{kind} ({row})")
    out = []
    for name in (fields.problem, fields.answer) + ((fields.response,) if fields.response else ()):
        try:
            value = _field(row, name)
        except KeyError:
            raise ValueError(f"missing field {name!r}") from None
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ValueError(f"field {name!r} is a {type(value).__name__}, expected text")
        out.append(str(value).strip())
    problem, answer, response = (*out, "") if len(out) == 2 else out
    if fields.answer_format == "gsm8k":
        if "####" not in answer:
            raise ValueError(f"field {fields.answer!r} has no '####' (answer_format=gsm8k)")
        answer = answer.rsplit("####", 1)[1].strip().replace(",", "")
    if not problem:
        raise ValueError(f"empty field {fields.problem!r}")
    if not answer:
        raise ValueError(f"empty field {fields.answer!r}")
    if fields.response and not response:
        raise ValueError(f"empty field {fields.response!r}")
    return problem, answer, response


class ProblemFiles(tfds.core.GeneratorBasedBuilder):
    """TFDS builder over local problem files (one `train` split, ArrayRecord)."""

    VERSION = tfds.core.Version("1.0.0")

    def __init__(self, files: Sequence[str], fields: FieldMap, skip_malformed: bool, **kwargs):
        self.files = [os.path.abspath(f) for f in files]
        self.fields = fields
        self.skip_malformed = skip_malformed
        self.skipped: list[str] = []
        super().__init__(config=tfds.core.BuilderConfig(name=self._fingerprint()), **kwargs)

    def _fingerprint(self) -> str:
        stats = [(f, os.path.getsize(f), os.path.getmtime(f)) for f in self.files]
        key = json.dumps([stats, dataclasses.asdict(self.fields), self.skip_malformed])
        return hashlib.sha256(key.encode()).hexdigest()[:16]

    def _info(self) -> tfds.core.DatasetInfo:
        features = tfds.features.FeaturesDict({
            "problem": tfds.features.Text(), "answer": tfds.features.Text(),
            "response": tfds.features.Text(), "source": tfds.features.Text()})
        return tfds.core.DatasetInfo(builder=self, features=features,
                                     metadata=tfds.core.MetadataDict())

    def _split_generators(self, dl_manager):
        del dl_manager
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        for path in self.files:
            for line, row in _rows(path):
                source = f"{path}:{line}"
                try:
                    problem, answer, response = parse_row(row, self.fields)
                except ValueError as e:
                    if not self.skip_malformed:
                        raise DataError(f"{source}: {e}") from None
                    self.skipped.append(f"{source}: {e}")
                    continue
                yield source, {"problem": problem, "answer": answer, "response": response,
                               "source": source}
        self.info.metadata["skipped"] = self.skipped


def load_problems(files: Sequence[str], fields: FieldMap = FieldMap(),
                  skip_malformed: bool = False, data_dir: str | None = None):
    """Prepares (once) and opens the files as a TFDS random-access data source.

    Returns `(source, skipped)`: rows sorted by file and line, and the list of skipped rows.
    """
    if not files:
        raise ValueError("no data files given")
    for f in files:
        if not os.path.isfile(f):
            raise FileNotFoundError(f"{f}: no such data file")
        if not f.endswith((".jsonl", ".json", ".parquet")):
            raise ValueError(f"{f}: expected a .jsonl or .parquet file")
    if fields.answer_format not in ANSWER_FORMATS:
        raise ValueError(f"answer_format={fields.answer_format!r}; expected {ANSWER_FORMATS}")
    data_dir = data_dir or os.path.join(os.path.expanduser("~"), ".cache", "stepgrpo_jax", "tfds")
    builder = ProblemFiles(files, fields, skip_malformed, data_dir=data_dir,
                           file_format="array_record")
    if jax.process_index() == 0:
        tfds.display_progress_bar(False)
        builder.download_and_prepare()
    _sync_hosts("data prepared")
    builder = ProblemFiles(files, fields, skip_malformed, data_dir=data_dir,
                           file_format="array_record")
    skipped = list(builder.info.metadata.get("skipped", []))
    for s in skipped:
        logging.warning("skipped malformed row %s", s)
    return _SortedSource(builder.as_data_source(split="train")), skipped


def load_from_config(data: Mapping[str, Any], files: str | Sequence[str]):
    """`load_problems` of `files` (a sequence, or a comma-separated string as a command-line
    override gives) with the field mapping and options of a `config.data` section."""
    return load_problems(as_list(files), FieldMap.from_config(data), data["skip_malformed"],
                         data["cache_dir"] or None)


def as_list(files: str | Sequence[str]) -> list[str]:
    """Files as a sequence or a comma-separated string."""
    if isinstance(files, str):
        return [f for f in files.split(",") if f]
    return list(files)


def _sync_hosts(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


class _SortedSource:
    """Records in file/line order (TFDS stores them in key-hash order)."""

    def __init__(self, source):
        self.source = source
        keys = [self._decode(source[i])["source"] for i in range(len(source))]
        self.order = sorted(range(len(keys)), key=lambda i: _source_key(keys[i]))

    @staticmethod
    def _decode(record) -> dict[str, str]:
        return {k: v.decode() if isinstance(v, bytes) else v for k, v in record.items()}

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, i: int) -> Problem:
        return Problem(**self._decode(self.source[self.order[i]]))


def _source_key(source: str) -> tuple[str, int]:
    path, line = source.rsplit(":", 1)
    return path, int(line)


class PromptStream:
    """This host's endless stream of problems: shuffled by seed, reshuffled every epoch.

    Host h of n takes records h, h+n, ...; `position` counts problems this host has taken,
    so `PromptStream(..., position=p)` resumes exactly where a checkpoint left off.
    """

    def __init__(self, source, seed: int, shuffle: bool = True, position: int = 0,
                 process_index: int | None = None, process_count: int | None = None):
        index = jax.process_index() if process_index is None else process_index
        count = jax.process_count() if process_count is None else process_count
        if len(source) < count:
            raise ValueError(f"{len(source)} problems cannot be split over {count} hosts")
        ds = grain.MapDataset.source(source)[index::count]
        if shuffle:
            ds = ds.shuffle(seed=seed)
        self.dataset = ds.repeat()
        self.position = position

    def take(self, n: int) -> list[Problem]:
        out = [self.dataset[self.position + i] for i in range(n)]
        self.position += n
        return out
