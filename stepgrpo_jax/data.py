"""Problems with reference answers: local JSONL / JSON / Parquet files (read by problem_rows)
-> TFDS ArrayRecord -> a shuffled, host-sharded stream whose position is a single integer (saved
in checkpoints).

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
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grain
import jax
import numpy as np
import tensorflow_datasets as tfds

from stepgrpo_jax import problem_rows
from stepgrpo_jax.problem_rows import DataError

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


def parse_row(row: Any, fields: FieldMap) -> tuple[str, str, str, list[str]]:
    """(problem, answer, response, warnings) of one parsed row; raises ValueError saying what is
    wrong."""
    if isinstance(row, Exception):
        kind = "bad encoding" if isinstance(row, UnicodeDecodeError) else "invalid JSON"
        raise ValueError(f"{kind} ({row})")
    if not isinstance(row, dict):
        raise ValueError("a JSON object expected (JSON Lines or a JSON array of objects), got a "
                         f"{type(row).__name__}")
    out, warnings = [], []
    for name in (fields.problem, fields.answer) + ((fields.response,) if fields.response else ()):
        try:
            value = _field(row, name)
        except KeyError:
            raise ValueError(f"missing field {name!r} (the row has: "
                             f"{', '.join(map(str, row))})") from None
        text, warning = problem_rows.field_text(name, value)
        out.append(text)
        warnings += [warning] if warning else []
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
    return problem, answer, response, warnings


class ProblemFiles(tfds.core.GeneratorBasedBuilder):
    """TFDS builder over local problem files (one `train` split, ArrayRecord)."""

    VERSION = tfds.core.Version("1.1.0")  # 1.1: numbers written exactly

    def __init__(self, files: Sequence[str], fields: FieldMap, skip_malformed: bool, **kwargs):
        self.files = [os.path.abspath(f) for f in files]
        self.fields = fields
        self.skip_malformed = skip_malformed
        self.skipped: list[str] = []
        self.warnings: list[str] = []
        super().__init__(config=tfds.core.BuilderConfig(name=self._fingerprint()), **kwargs)

    # Local files: nothing is downloaded, so TFDS's download messages would only mislead.
    def _log_download_bytes(self) -> None:
        pass

    def _log_download_done(self) -> None:
        pass

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
            kept, skipped = 0, len(self.skipped)
            for line, row in problem_rows.read_rows(path):
                source = f"{path}:{line}"
                try:
                    problem, answer, response, warnings = parse_row(row, self.fields)
                except ValueError as e:
                    if not self.skip_malformed:
                        raise DataError(f"{source}: {e}") from None
                    self.skipped.append(f"{source}: {e}")
                    continue
                self.warnings += [f"{source}: {w}" for w in warnings]
                kept += 1
                yield source, {"problem": problem, "answer": answer, "response": response,
                               "source": source}
            if not kept:
                bad = self.skipped[skipped:]
                raise DataError(f"{path}: no usable rows" + (
                    f"; all {len(bad)} are malformed, the first: {bad[0]}" if bad else ""))
        self.info.metadata["skipped"] = self.skipped
        self.info.metadata["warnings"] = self.warnings


def load_problems(files: Sequence[str], fields: FieldMap = FieldMap(),
                  skip_malformed: bool = False, data_dir: str | None = None,
                  prompt_lengths: Callable[[list[str]], Sequence[int]] | None = None,
                  max_prompt_tokens: int | None = None):
    """Prepares (once) and opens the files as a TFDS random-access data source.

    `.jsonl` files hold one JSON object per line, `.json` files that or one array of objects.
    With `prompt_lengths` (problems -> prompt token counts) and `max_prompt_tokens` (the largest
    prompt bucket), a longer prompt is a malformed row, found here rather than at the rollout
    that draws it. A malformed row raises `DataError` naming its file and line, or with
    `skip_malformed` is skipped, counted and logged; a file with no usable row always raises.

    Returns `(source, skipped)`: rows sorted by file and line, and the list of skipped rows.
    """
    if not files:
        raise ValueError("no data files given")
    for f in files:
        if not os.path.isfile(f):
            raise FileNotFoundError(f"{f}: no such data file")
        if not f.endswith((".jsonl", ".json", ".parquet")):
            raise ValueError(f"{f}: expected a .jsonl, .json or .parquet file")
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
    for w in builder.info.metadata.get("warnings", []):
        logging.warning("%s", w)
    source = _SortedSource(builder.as_data_source(split="train"))
    if prompt_lengths is not None:
        skipped += _drop_long_prompts(source, prompt_lengths, max_prompt_tokens, skip_malformed)
    for s in skipped:
        logging.warning("skipped malformed row %s", s)
    return source, skipped


def _drop_long_prompts(source: _SortedSource, prompt_lengths, max_prompt_tokens: int,
                       skip_malformed: bool) -> list[str]:
    """Removes rows whose prompt exceeds `max_prompt_tokens` from `source`; their reasons."""
    problems = [source[i] for i in range(len(source))]
    lengths = prompt_lengths([p.problem for p in problems])
    long = [(p.source, n) for p, n in zip(problems, lengths, strict=True)
            if n > max_prompt_tokens]
    reasons = [f"{where}: prompt of {n} tokens is longer than the largest prompt bucket "
               f"({max_prompt_tokens})" for where, n in long]
    if long and not skip_malformed:
        raise DataError(f"{reasons[0]}" + (f" (and {len(long) - 1} more rows)" if len(long) > 1
                                           else "") + "; data.skip_malformed skips such rows")
    if len(long) == len(problems):
        raise DataError(f"no usable rows: all {len(long)} prompts are too long, the first: "
                        f"{reasons[0]}")
    too_long = {where for where, _ in long}
    source.order = [i for i, p in zip(source.order, problems, strict=True)
                    if p.source not in too_long]
    return reasons


def load_from_config(data: Mapping[str, Any], files: str | Sequence[str],
                     prompt_lengths: Callable[[list[str]], Sequence[int]] | None = None,
                     max_prompt_tokens: int | None = None):
    """`load_problems` of `files` (a sequence, or a comma-separated string as a command-line
    override gives) with the field mapping and options of a `config.data` section."""
    return load_problems(as_list(files), FieldMap.from_config(data), data["skip_malformed"],
                         data["cache_dir"] or None, prompt_lengths, max_prompt_tokens)


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
