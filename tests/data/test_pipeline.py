"""Sources, bad rows, mixing, evaluation split and the tokenized-data cache."""

from __future__ import annotations

import collections
import csv
import json
import time
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import finetune.data.pipeline as pipeline
from finetune.config.data import DataConfig, DatasetConfig
from finetune.data import sources
from finetune.data.cache import EntryWriter, cache_root, load_entry
from finetune.data.pipeline import mix_counts, prepare_data
from finetune.data.sources import iter_rows
from finetune.errors import DataError
from tests.data.helpers import write_jsonl


def data_config(tmp_path: Path, train: list[dict], **fields) -> DataConfig:
    return DataConfig(
        train=[DatasetConfig(**d) for d in train],
        cache_dir=str(tmp_path / "cache"),
        **fields,
    )


# --------------------------------------------------------------------------------------
# sources
# --------------------------------------------------------------------------------------


def test_every_local_file_type_with_its_row_locations(tmp_path: Path) -> None:
    records = [{"prompt": "a", "completion": "b"}, {"prompt": "c", "completion": "d"}]
    (tmp_path / "r.jsonl").write_text(json.dumps(records[0]) + "\n\n" + json.dumps(records[1]))
    (tmp_path / "r.json").write_text(json.dumps(records))
    with (tmp_path / "r.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, ["prompt", "completion"])
        writer.writeheader()
        writer.writerows(records)
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "r.parquet")
    (tmp_path / "r.txt").write_text("first line\n\nthird line\n")

    def rows(name: str, fmt: str = "completion") -> list[tuple[str, object]]:
        return list(iter_rows(DatasetConfig(path=str(tmp_path / name), format=fmt)))

    jsonl = rows("r.jsonl")
    assert [w for w, _ in jsonl] == [f"{tmp_path}/r.jsonl:1", f"{tmp_path}/r.jsonl:3"]
    assert [r for _, r in jsonl] == records
    for name in ("r.json", "r.csv", "r.parquet"):
        got = rows(name)
        assert [w for w, _ in got] == [f"{tmp_path}/{name} row 1", f"{tmp_path}/{name} row 2"]
        assert [r for _, r in got] == records, name
    assert rows("r.txt", "text") == [
        (f"{tmp_path}/r.txt:1", {"text": "first line"}),
        (f"{tmp_path}/r.txt:3", {"text": "third line"}),
    ]


def test_dataset_directory_is_read_through_datasets(tmp_path: Path, tok) -> None:
    saved = tmp_path / "saved"
    datasets.Dataset.from_dict(
        {"prompt": ["the cat", "a dog"], "completion": [" sat", " ran"]}
    ).save_to_disk(str(saved))
    cfg = data_config(tmp_path, [{"path": str(saved), "format": "completion"}])
    assert [w for w, _ in iter_rows(cfg.train[0])] == [
        f"{saved}[train] row 1",
        f"{saved}[train] row 2",
    ]
    assert len(prepare_data(cfg, tok, seed=0).train) == 2


def test_missing_file_and_unknown_type(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="file not found"):
        list(iter_rows(DatasetConfig(path=str(tmp_path / "nope.jsonl"))))
    (tmp_path / "x.xml").write_text("<a/>")
    with pytest.raises(DataError, match=r"unsupported file type '\.xml'"):
        list(iter_rows(DatasetConfig(path=str(tmp_path / "x.xml"))))


def test_hub_name_fails_fast_when_the_hub_is_unreachable(monkeypatch) -> None:
    monkeypatch.setattr(sources, "hub_offline", lambda: False)
    monkeypatch.setattr(sources, "hub_reachable", lambda timeout=5.0: False)
    start = time.monotonic()
    with pytest.raises(DataError, match=r"cannot be reached.*HF_HUB_OFFLINE=1"):
        list(iter_rows(DatasetConfig(path="finetune-tests/no-such-dataset")))
    assert time.monotonic() - start < 5


def test_hub_probe_gives_up_within_its_timeout(monkeypatch) -> None:
    def hang(*args, **kwargs):  # a black-holed network: no answer for longer than we wait
        time.sleep(3)
        raise OSError("timed out")

    monkeypatch.setattr(sources.socket, "create_connection", hang)
    start = time.monotonic()
    assert sources.hub_reachable(timeout=1.0) is False
    assert time.monotonic() - start < 3


# --------------------------------------------------------------------------------------
# bad rows
# --------------------------------------------------------------------------------------

BAD_LINES = [
    json.dumps({"prompt": "the cat", "completion": " sat"}),  # 1: fine
    "",  # 2: blank, not a row
    json.dumps({"prompt": "the dog"}),  # 3: missing field
    json.dumps({"prompt": "the dog", "completion": 5}),  # 4: wrong type
    json.dumps({"prompt": "the dog", "completion": "  "}),  # 5: empty
    '{"prompt": "the dog", ',  # 6: not JSON
]


def test_bad_rows_stop_with_file_and_line(tmp_path: Path, tok) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(BAD_LINES) + "\n")
    cfg = data_config(tmp_path, [{"path": str(path), "format": "completion"}])
    with pytest.raises(DataError) as err:
        prepare_data(cfg, tok, seed=0)
    message = str(err.value)
    assert message.startswith("4 row(s) do not fit their data format")
    assert f"{path}:3: missing field 'completion'" in message
    assert f"{path}:4: field 'completion' must be a string, got int" in message
    assert f"{path}:5: field 'completion' is empty" in message
    assert f"{path}:6: invalid JSON" in message
    assert "data.on_bad_row=skip" in message


def test_bad_rows_skipped_and_counted(tmp_path: Path, tok) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(BAD_LINES) + "\n")
    cfg = data_config(tmp_path, [{"path": str(path), "format": "completion"}], on_bad_row="skip")
    data = prepare_data(cfg, tok, seed=0)
    stats = data.sources[0].stats
    assert (stats.rows, stats.bad, stats.kept) == (5, 4, 1)
    assert len(data.train) == 1


def test_a_source_with_no_usable_row_is_an_error(tmp_path: Path, tok) -> None:
    path = write_jsonl(tmp_path / "wrong.jsonl", [{"content": "the cat"}] * 3)
    cfg = data_config(tmp_path, [{"path": str(path)}], on_bad_row="skip")
    with pytest.raises(DataError, match=r"data.train\[0\].*no usable rows \(3 read, 3 bad"):
        prepare_data(cfg, tok, seed=0)


# --------------------------------------------------------------------------------------
# mixing and the evaluation split
# --------------------------------------------------------------------------------------


def _source(tmp_path: Path, name: str, rows: int) -> str:
    """Rows `<name> <i>`: the first word names the source, the number the row."""
    return str(
        write_jsonl(tmp_path / f"{name}.jsonl", [{"text": f"{name} {i}"} for i in range(rows)])
    )


def _origins(tok, dataset) -> collections.Counter:
    return collections.Counter(tok.decode(row["input_ids"][:-1]) for row in dataset)


def test_mixing_weights_and_sample_counts(tmp_path: Path, tok) -> None:
    """Counts are deterministic: each source gets its share of the weighted sources'
    combined rows, to within one row (rounding); `samples` is exact."""
    train = [
        {"path": _source(tmp_path, "red", 100), "weight": 1.0},  # 112 of 100: 12 twice
        {"path": _source(tmp_path, "blue", 300), "weight": 1.0},  # 112 of 300
        {"path": _source(tmp_path, "green", 50), "weight": 2.0},  # 225 of 50: 4-5 times
        {"path": _source(tmp_path, "cat", 100), "samples": 30},
        {"path": _source(tmp_path, "dog", 20)},  # every row once
    ]
    data = prepare_data(data_config(tmp_path, train), tok, seed=3)
    rows = _origins(tok, data.train)
    per_source = collections.Counter(text.split()[0] for text in rows.elements())
    weighted = 450  # 100 + 300 + 50 rows share the weights 1 : 1 : 2
    for name, weight in (("red", 1), ("blue", 1), ("green", 2)):
        assert abs(per_source[name] - weighted * weight / 4) <= 1, per_source
    assert per_source["cat"] == 30 and per_source["dog"] == 20
    assert [s.train_rows for s in data.sources] == [112, 112, 225, 30, 20]
    # Repeats are spread evenly: whole passes over the source, then a sample of the rest.
    copies = collections.defaultdict(collections.Counter)
    for text, n in rows.items():
        copies[text.split()[0]][n] += 1
    assert copies["green"] == {4: 25, 5: 25}
    assert copies["red"] == {1: 88, 2: 12}
    assert copies["blue"] == {1: 112} and copies["cat"] == {1: 30}


def test_mix_counts_rule() -> None:
    srcs = [
        DatasetConfig(path="a", weight=3),
        DatasetConfig(path="b", weight=1),
        DatasetConfig(path="c"),
    ]
    assert mix_counts([10, 30, 7], srcs) == [30, 10, 7]


def test_eval_split_is_seeded_per_source_and_disjoint(tmp_path: Path, tok) -> None:
    train = [
        {"path": _source(tmp_path, "red", 100)},
        {"path": _source(tmp_path, "blue", 50), "weight": 1.0},
    ]
    cfg = data_config(tmp_path, train, eval_ratio=0.2)
    data = prepare_data(cfg, tok, seed=0)
    train_rows, eval_rows = set(_origins(tok, data.train)), set(_origins(tok, data.eval))
    assert not train_rows & eval_rows
    assert [s.eval_rows for s in data.sources] == [20, 10]
    assert [s.train_rows for s in data.sources] == [80, 40]
    again = prepare_data(cfg, tok, seed=0)
    assert again.train["input_ids"] == data.train["input_ids"]
    other = prepare_data(cfg, tok, seed=1)
    assert set(_origins(tok, other.eval)) != eval_rows


def test_separate_eval_files(tmp_path: Path, tok) -> None:
    cfg = DataConfig(
        train=[DatasetConfig(path=_source(tmp_path, "red", 10))],
        eval=[DatasetConfig(path=_source(tmp_path, "blue", 4))],
        cache_dir=str(tmp_path / "cache"),
    )
    data = prepare_data(cfg, tok, seed=0)
    assert len(data.train) == 10 and len(data.eval) == 4
    assert all(text.startswith("blue") for text in _origins(tok, data.eval))


# --------------------------------------------------------------------------------------
# cache
# --------------------------------------------------------------------------------------


def test_cache_is_reused_until_a_source_changes(tmp_path: Path, tok, monkeypatch) -> None:
    calls = collections.Counter()
    real = pipeline.encode_row

    def counting(row, fmt, tokenizer):
        calls[fmt.type] += 1
        return real(row, fmt, tokenizer)

    monkeypatch.setattr(pipeline, "encode_row", counting)
    red = _source(tmp_path, "red", 30)
    blue = write_jsonl(tmp_path / "blue.jsonl", [{"prompt": "blue", "completion": " cat"}] * 20)
    train = [{"path": red}, {"path": str(blue), "format": "completion"}]
    cfg = data_config(tmp_path, train)

    first = prepare_data(cfg, tok, seed=0)
    assert calls == {"text": 30, "completion": 20}
    assert [s.cached for s in first.sources] == [False, False]

    calls.clear()
    second = prepare_data(cfg, tok, seed=0)
    assert not calls  # nothing tokenized
    assert [s.cached for s in second.sources] == [True, True]
    assert second.train["input_ids"] == first.train["input_ids"]
    assert second.sources[0].stats == first.sources[0].stats

    write_jsonl(blue, [{"prompt": "blue", "completion": " dog"}] * 20)  # same size, new text
    third = prepare_data(cfg, tok, seed=0)
    assert calls == {"completion": 20}
    assert [s.cached for s in third.sources] == [True, False]

    calls.clear()
    prepare_data(cfg.model_copy(update={"max_length": 64}), tok, seed=0)
    assert calls == {"text": 30, "completion": 20}  # the key covers max_length

    entries = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert len(entries) == 5 and not [e for e in entries if e.startswith(".")]


def test_cache_entries_are_published_atomically(tmp_path: Path) -> None:
    """Two writers racing for one key both succeed and leave one complete entry."""
    first, second = EntryWriter(tmp_path, "k" * 64), EntryWriter(tmp_path, "k" * 64)
    assert load_entry(tmp_path, "k" * 64) is None  # nothing visible while writing
    first.add([1, 2, 3], [1, 2, 3])
    second.add([4, 5], [4, 5])
    assert len(first.finish({"stats": {}})) == 1
    assert second.finish({"stats": {}})["input_ids"] == [[1, 2, 3]]  # the winner's copy
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k" * 64]


def test_cache_location(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FINETUNE_CACHE", str(tmp_path))
    assert cache_root(None) == tmp_path / "data"
    assert cache_root("/x/y") == Path("/x/y")
    monkeypatch.delenv("FINETUNE_CACHE")
    assert cache_root(None) == Path.home() / ".cache/finetune/data"


def test_cache_off_writes_nothing_to_the_cache_dir(tmp_path: Path, tok) -> None:
    cfg = data_config(tmp_path, [{"path": _source(tmp_path, "red", 5)}], cache=False)
    assert len(prepare_data(cfg, tok, seed=0).train) == 5
    assert not (tmp_path / "cache").exists()
