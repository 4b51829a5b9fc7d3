"""From the data section to tokenized (and optionally packed) train and eval datasets.

Per source: read rows, check and encode each in its format, truncate, drop rows with no
trainable token, and cache the result (keyed by the source's content, its format options,
max_length, truncation and the tokenizer). Then, seeded: hold out the evaluation split of
each source, mix the sources by weight or sample count, and pack.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from transformers import PreTrainedTokenizerBase

from finetune.config.data import DataConfig, DatasetConfig
from finetune.data.cache import (
    FEEDBACK_SCHEMA,
    PAIR_SCHEMA,
    PROMPT_SCHEMA,
    SCHEMA,
    EntryWriter,
    cache_key,
    cache_root,
    load_entry,
)
from finetune.data.collator import IGNORE_INDEX
from finetune.data.formats import (
    BadRow,
    Encoded,
    EncodedFeedback,
    EncodedPair,
    EncodedPrompt,
    encode_row,
    keep_side,
)
from finetune.data.packing import PackedDataset
from finetune.data.sources import iter_rows, source_fingerprint
from finetune.data.tokenizer import build_tokenizer, ensure_chat_template, tokenizer_fingerprint
from finetune.errors import ConfigError, DataError

if TYPE_CHECKING:
    from finetune.config.schema import RunConfig

logger = logging.getLogger(__name__)

MAX_REPORTED_BAD_ROWS = 20
"""Bad rows quoted per source (all are counted)."""


@dataclass
class SourceStats:
    """What happened to one source's rows during tokenization (stored with the cache)."""

    rows: int = 0
    """Rows read (blank lines of .jsonl/.txt files are not rows)."""
    bad: int = 0
    """Rows that did not fit the format."""
    bad_examples: list[str] = field(default_factory=list)
    """`location: reason` of the first bad rows."""
    no_trainable: int = 0
    """Rows dropped because no token carried loss (after truncation)."""
    truncated: int = 0
    """Kept rows that were cut to max_length."""
    kept: int = 0
    """Rows tokenized and kept."""
    tokens: int = 0
    """Tokens in the kept rows."""
    trainable_tokens: int = 0
    """Tokens of the kept rows that carry loss."""


@dataclass
class SourceReport:
    """One source in a prepared run: its statistics and its share of train and eval."""

    name: str
    """The config path of the source, e.g. `data.train[0]`."""
    path: str
    format: str
    stats: SourceStats
    cached: bool
    """Whether the tokenized rows came from the cache."""
    train_rows: int = 0
    """Rows of this source in the training set (repeats included)."""
    eval_rows: int = 0


@dataclass
class PreparedData:
    """The datasets a run trains and evaluates on, and how they were made."""

    train: Any
    """A `datasets.Dataset` of samples, or a `PackedDataset` of rows when packing."""
    eval: Any | None
    train_samples: datasets.Dataset
    """The training samples before packing (`input_ids`, `labels`, `length`)."""
    eval_samples: datasets.Dataset | None
    sources: list[SourceReport]
    max_length: int
    truncation: str
    packing_efficiency: float | None = None
    """Share of packed positions holding tokens (None without packing)."""


def build_datasets(
    cfg: DataConfig, tokenizer: PreTrainedTokenizerBase, seed: int
) -> tuple[Any, Any | None]:
    """Tokenize, mix and (when `cfg.packing`) pack the training and evaluation data.

    Returns:
        The training set and the evaluation set (None when there is none); datasets of
        `input_ids` / `labels` samples, or `PackedDataset`s when packing. Collate them with
        `build_collator(cfg, tokenizer.pad_token_id)`.

    Raises:
        DataError: a source cannot be read, has bad rows (with `on_bad_row: error`), or has
            no usable row.
    """
    prepared = prepare_data(cfg, tokenizer, seed)
    return prepared.train, prepared.eval


def prepare_data(cfg: DataConfig, tokenizer: PreTrainedTokenizerBase, seed: int) -> PreparedData:
    """`build_datasets` with everything a summary needs (see `format_summary`).

    The tokenizer gains the default chat template (and its tokens) when chat data needs one
    and it has none; save it after this call.
    """
    _check_tokenizer(cfg, tokenizer)
    fingerprint = tokenizer_fingerprint(tokenizer)
    train = [
        _tokenize_source(s, f"data.train[{i}]", cfg, tokenizer, fingerprint)
        for i, s in enumerate(cfg.train)
    ]
    evals = [
        _tokenize_source(s, f"data.eval[{i}]", cfg, tokenizer, fingerprint)
        for i, s in enumerate(cfg.eval)
    ]
    _check_rows(train + evals, cfg.on_bad_row)
    train_set, eval_set = _split_and_mix(train, evals, cfg, seed)
    prepared = PreparedData(
        train=train_set,
        eval=eval_set,
        train_samples=train_set,
        eval_samples=eval_set,
        sources=[part.report for part in train + evals],
        max_length=cfg.max_length,
        truncation=cfg.truncation,
    )
    if cfg.packing:
        prepared.train = PackedDataset(train_set, cfg.max_length)
        prepared.packing_efficiency = prepared.train.efficiency
        logger.info(
            "packing: %d samples into %d rows of %d tokens, %.1f%% of positions hold tokens",
            len(train_set),
            len(prepared.train),
            cfg.max_length,
            100 * prepared.packing_efficiency,
        )
        if eval_set is not None:
            prepared.eval = PackedDataset(eval_set, cfg.max_length)
    return prepared


def preprocess(cfg: RunConfig) -> PreparedData:
    """Build the run's tokenizer and data exactly as `finetune train` would, without
    training (filling the data cache on the way).

    Raises:
        ConfigError: the tokenizer cannot be loaded.
        DataError: as `build_datasets`.
    """
    tokenizer = build_tokenizer(
        cfg.tokenizer, cfg.data, cfg.model.name_or_path, cfg.model.trust_remote_code
    )
    return prepare_data(cfg.data, tokenizer, cfg.train.seed)


def _check_tokenizer(cfg: DataConfig, tokenizer: PreTrainedTokenizerBase) -> None:
    sources = [*cfg.train, *cfg.eval]
    if not tokenizer.is_fast:
        raise ConfigError(
            f"tokenizer: {type(tokenizer).__name__} is not a fast (tokenizers-backed) "
            "tokenizer; loss masks need its character offsets. Use a checkpoint with a "
            "tokenizer.json"
        )
    if any(s.format.type == "chat" for s in sources):
        ensure_chat_template(tokenizer)
    if tokenizer.eos_token_id is None and any(s.format.type != "chat" for s in sources):
        raise ConfigError(
            "tokenizer: it has no EOS token, which text/completion/alpaca samples end with; "
            "use a tokenizer that defines eos_token"
        )


# --------------------------------------------------------------------------------------
# one source
# --------------------------------------------------------------------------------------


@dataclass
class _Tokenized:
    source: DatasetConfig
    dataset: datasets.Dataset
    report: SourceReport


def _tokenize_source(
    source: DatasetConfig,
    name: str,
    cfg: DataConfig,
    tokenizer: PreTrainedTokenizerBase,
    tokenizer_hash: str,
) -> _Tokenized:
    root = cache_root(cfg.cache_dir) if cfg.cache else None
    content = source_fingerprint(source) if root is not None else None
    key = cache_key(
        {
            "source": {"content": content, "subset": source.subset, "split": source.split},
            "format": source.format.model_dump(),
            "max_length": cfg.max_length,
            "truncation": cfg.truncation,
            "tokenizer": tokenizer_hash,
        }
    )
    if root is not None and content is not None:
        hit = load_entry(root, key)
        if hit is not None:
            dataset, meta = hit
            logger.info("%s (%s): tokenized data from the cache %s", name, source.path, key[:12])
            stats = SourceStats(**meta["stats"])
            return _Tokenized(source, dataset, _report(name, source, stats, cached=True))
    logger.info("%s (%s): tokenizing", name, source.path)
    schema = SCHEMAS.get(source.format.type, SCHEMA)
    writer = EntryWriter(root if content is not None else None, key, schema=schema)
    try:
        stats = _encode_rows(source, cfg, tokenizer, writer)
        dataset = writer.finish({"path": source.path, "stats": asdict(stats)})
    except BaseException:
        writer.abort()
        raise
    return _Tokenized(source, dataset, _report(name, source, stats, cached=False))


SCHEMAS = {"preference": PAIR_SCHEMA, "feedback": FEEDBACK_SCHEMA, "prompt": PROMPT_SCHEMA}
"""The cached columns of formats whose rows are not samples (`SCHEMA`)."""


def _report(name: str, source: DatasetConfig, stats: SourceStats, cached: bool) -> SourceReport:
    return SourceReport(name, source.path, source.format.type, stats, cached)


def _encode_rows(
    source: DatasetConfig,
    cfg: DataConfig,
    tokenizer: PreTrainedTokenizerBase,
    writer: EntryWriter,
) -> SourceStats:
    stats = SourceStats()
    budget = text_budget(tokenizer, cfg.max_length)
    for where, row in iter_rows(source):
        stats.rows += 1
        try:
            encoded = encode_row(
                cut_long_text(row, budget, cfg.truncation), source.format, tokenizer
            )
        except BadRow as err:
            stats.bad += 1
            if len(stats.bad_examples) < MAX_REPORTED_BAD_ROWS:
                stats.bad_examples.append(f"{where}: {err}")
            continue
        if isinstance(encoded, EncodedPair):
            _add_pair(encoded, cfg, writer, stats)
            continue
        if isinstance(encoded, EncodedFeedback):
            _add_feedback(encoded, cfg, writer, stats)
            continue
        if isinstance(encoded, EncodedPrompt):
            _add_prompt(encoded, cfg, writer, stats)
            continue
        truncated = len(encoded.input_ids) > cfg.max_length
        if truncated:
            encoded = truncate(encoded, cfg.max_length, cfg.truncation)
        if encoded.label is not None:
            # A classification row: one label for the whole sequence.
            labels, trainable = [encoded.label], 1
        else:
            labels = [
                i if t else IGNORE_INDEX
                for i, t in zip(encoded.input_ids, encoded.trainable, strict=True)
            ]
            # The first label is never predicted (nothing comes before it).
            trainable = sum(label != IGNORE_INDEX for label in labels[1:])
        if trainable == 0:
            stats.no_trainable += 1
            continue
        writer.add(encoded.input_ids, labels)
        stats.kept += 1
        stats.truncated += truncated
        stats.tokens += len(encoded.input_ids)
        stats.trainable_tokens += trainable
    return stats


def _add_pair(pair: EncodedPair, cfg: DataConfig, writer: EntryWriter, stats: SourceStats) -> None:
    """Truncate a preference pair as a sample is truncated, count it, and write it."""
    longest = len(pair.prompt_ids) + max(len(pair.chosen_ids), len(pair.rejected_ids))
    truncated = longest > cfg.max_length
    if truncated:
        pair = truncate_pair(pair, cfg.max_length, cfg.truncation)
    if not pair.chosen_ids or not pair.rejected_ids:
        stats.no_trainable += 1
        return
    writer.add_pair(pair.prompt_ids, pair.chosen_ids, pair.rejected_ids)
    answers = len(pair.chosen_ids) + len(pair.rejected_ids)
    stats.kept += 1
    stats.truncated += truncated
    stats.tokens += 2 * len(pair.prompt_ids) + answers
    stats.trainable_tokens += answers


def _add_feedback(
    row: EncodedFeedback, cfg: DataConfig, writer: EntryWriter, stats: SourceStats
) -> None:
    """Truncate a feedback row as a sample is truncated, count it, and write it."""
    truncated = len(row.prompt_ids) + len(row.completion_ids) > cfg.max_length
    prompt, completion = row.prompt_ids, row.completion_ids
    if truncated:
        prompt, (completion,) = truncate_answers(
            prompt, [completion], cfg.max_length, cfg.truncation
        )
    if not completion:
        stats.no_trainable += 1
        return
    writer.add_feedback(prompt, completion, row.label)
    stats.kept += 1
    stats.truncated += truncated
    stats.tokens += len(prompt) + len(completion)
    stats.trainable_tokens += len(completion)


def _add_prompt(
    row: EncodedPrompt, cfg: DataConfig, writer: EntryWriter, stats: SourceStats
) -> None:
    """Truncate a prompt as a sample is truncated (`right` keeps its start, `left` its
    end), count it, and write it."""
    truncated = len(row.prompt_ids) > cfg.max_length
    ids = row.prompt_ids
    if truncated:
        ids = ids[-cfg.max_length :] if cfg.truncation == "left" else ids[: cfg.max_length]
    writer.add_prompt(ids, row.prompt, row.extras)
    stats.kept += 1
    stats.truncated += truncated
    stats.tokens += len(ids)


def truncate_pair(pair: EncodedPair, max_length: int, side: str) -> EncodedPair:
    """Cut both sequences of `pair` (prompt + answer) to `max_length` tokens, as
    `truncate_answers` does."""
    prompt, (chosen, rejected) = truncate_answers(
        pair.prompt_ids, [pair.chosen_ids, pair.rejected_ids], max_length, side
    )
    return EncodedPair(prompt, chosen, rejected)


def truncate_answers(
    prompt: list[int], answers: list[list[int]], max_length: int, side: str
) -> tuple[list[int], list[list[int]]]:
    """Cut every sequence `prompt + answer` to `max_length` tokens. `right` keeps the
    start: the answers lose their ends (an answer left empty drops the row). `left` keeps
    the end: the prompt loses its start, as far as the longest answer needs, and an answer
    longer than `max_length` alone keeps its last tokens."""
    if side == "right":
        room = max(max_length - len(prompt), 0)
        return prompt[:max_length], [answer[:room] for answer in answers]
    room = max(max_length - max(map(len, answers)), 0)
    return prompt[len(prompt) - room :], [answer[-max_length:] for answer in answers]


def unpaired(rows: datasets.Dataset | None, seed: int) -> datasets.Dataset | None:
    """Feedback rows from preference pairs: each pair's chosen answer as a desirable one
    and its rejected answer as an undesirable one, in a seeded random order (the two
    answers of a pair then rarely share a micro-batch, where KTO's KL term would pair one
    with its own prompt). Feedback rows (or None) are returned as they are."""
    if rows is None or "chosen_ids" not in rows.column_names:
        return rows
    table = rows.with_format("arrow")[:]
    halves = []
    for column, label in (("chosen_ids", True), ("rejected_ids", False)):
        answers = table[column]
        lengths = pc.add(pc.list_value_length(table["prompt_ids"]), pc.list_value_length(answers))
        halves.append(
            pa.table(
                {
                    "prompt_ids": table["prompt_ids"],
                    "completion_ids": answers,
                    "label": pa.array([label] * len(table)),
                    "length": pc.cast(lengths, pa.int32()),
                },
                schema=FEEDBACK_SCHEMA,
            )
        )
    merged = datasets.Dataset(pa.concat_tables(halves))
    order = np.random.default_rng(seed).permutation(len(merged))
    return merged.select(order)


def text_budget(tokenizer: PreTrainedTokenizerBase, max_length: int) -> int:
    """Characters of one text field that always hold more than `max_length` tokens.

    No token covers more characters than its own string has (a byte-level token's string
    has one character per byte), so `max_length` tokens never span more than `max_length`
    times the longest token. Twice that leaves room for the pre-tokenizer's word boundary
    at the cut."""
    longest = max((len(token) for token in tokenizer.get_vocab()), default=1)
    return 2 * max_length * max(longest, 1) + 64


def cut_long_text(row: Any, budget: int, side: str) -> Any:
    """`row` with every string longer than `budget` cut to `budget` characters, keeping the
    side that truncation keeps (the start for `right`, the end for `left`).

    The tokens a truncated row keeps lie within its first (or last) `budget` characters,
    so the result is the same, while a 50 MB field no longer has to be tokenized whole
    (byte-level BPE is superlinear in the length of one word).
    """
    if isinstance(row, str):
        return keep_side(row, budget, side)
    if isinstance(row, dict):
        return {key: cut_long_text(value, budget, side) for key, value in row.items()}
    if isinstance(row, list):
        return [cut_long_text(value, budget, side) for value in row]
    return row


def truncate(encoded: Encoded, max_length: int, side: str) -> Encoded:
    """Cut `encoded` to `max_length` tokens: keep the start (`right`) or the end (`left`)."""
    kept = slice(-max_length, None) if side == "left" else slice(0, max_length)
    return Encoded(encoded.input_ids[kept], encoded.trainable[kept], encoded.label)


def _check_rows(parts: list[_Tokenized], on_bad_row: str) -> None:
    bad = [part.report for part in parts if part.report.stats.bad]
    if bad and on_bad_row == "error":
        total = sum(r.stats.bad for r in bad)
        lines = [example for r in bad for example in r.stats.bad_examples][:10]
        more = f"\n  ... and {total - len(lines)} more" if total > len(lines) else ""
        raise DataError(
            f"{total} row(s) do not fit their data format:\n  "
            + "\n  ".join(lines)
            + more
            + "\nFix these rows, or set data.on_bad_row=skip to drop them."
        )
    for report in bad:
        logger.warning(
            "%s (%s): skipped %d bad row(s), e.g. %s",
            report.name,
            report.path,
            report.stats.bad,
            report.stats.bad_examples[0],
        )
    for part in parts:
        stats = part.report.stats
        if stats.kept == 0:
            raise DataError(
                f"{part.report.name} ({part.source.path}): no usable rows ({stats.rows} read, "
                f"{stats.bad} bad, {stats.no_trainable} without a trainable token after "
                "truncation); check the file, its format options and data.max_length"
            )


# --------------------------------------------------------------------------------------
# split and mix
# --------------------------------------------------------------------------------------


def _split_and_mix(
    train: list[_Tokenized], evals: list[_Tokenized], cfg: DataConfig, seed: int
) -> tuple[datasets.Dataset, datasets.Dataset | None]:
    pools, held_out = [], []
    for i, part in enumerate(train):
        n = len(part.dataset)
        order = np.random.default_rng([seed, i, 0]).permutation(n)
        k = _eval_count(n, cfg.eval_ratio)
        held_out.append(np.sort(order[:k]))
        pools.append(order[k:])
    picks = _mix(pools, [p.source for p in train], seed)
    train_set = _select([p.dataset for p in train], picks, np.random.default_rng([seed, 2]))
    for part, pick, held in zip(train, picks, held_out, strict=True):
        part.report.train_rows, part.report.eval_rows = len(pick), len(held)
    if evals:
        eval_pools = [np.arange(len(p.dataset)) for p in evals]
        eval_picks = _mix(eval_pools, [p.source for p in evals], seed + 1)
        for part, pick in zip(evals, eval_picks, strict=True):
            part.report.eval_rows = len(pick)
        return train_set, _select([p.dataset for p in evals], eval_picks, None)
    if any(len(h) for h in held_out):
        return train_set, _select([p.dataset for p in train], held_out, None)
    return train_set, None


def _eval_count(n: int, ratio: float) -> int:
    if ratio == 0 or n < 2:
        return 0
    return min(n - 1, max(1, round(n * ratio)))


def mix_counts(sizes: list[int], sources: list[DatasetConfig]) -> list[int]:
    """Rows each source contributes: `samples`, else a weight's share of the weighted
    sources' combined rows, else every row once."""
    weighted = [i for i, s in enumerate(sources) if s.weight is not None]
    total_weight = sum(sources[i].weight for i in weighted)
    weighted_rows = sum(sizes[i] for i in weighted)
    counts = []
    for size, source in zip(sizes, sources, strict=True):
        if source.samples is not None:
            counts.append(source.samples)
        elif source.weight is not None:
            counts.append(round(weighted_rows * source.weight / total_weight))
        else:
            counts.append(size)
    return counts


def _mix(pools: list[np.ndarray], sources: list[DatasetConfig], seed: int) -> list[np.ndarray]:
    counts = mix_counts([len(p) for p in pools], sources)
    picks = []
    for i, (pool, count) in enumerate(zip(pools, counts, strict=True)):
        rng = np.random.default_rng([seed, i, 1])
        if count > 0 and len(pool) == 0:
            raise DataError(
                f"{sources[i].path}: no rows left for training after the evaluation split"
            )
        repeats, rest = divmod(count, len(pool)) if len(pool) else (0, 0)
        # Repeat whole passes before drawing the remainder, so no row is over-represented
        # by more than one copy.
        picks.append(np.concatenate([*[pool] * repeats, rng.choice(pool, rest, replace=False)]))
    return picks


def _select(
    parts: list[datasets.Dataset], picks: list[np.ndarray], rng: np.random.Generator | None
) -> datasets.Dataset:
    offsets = np.cumsum([0, *(len(p) for p in parts[:-1])])
    indices = np.concatenate([offset + pick for offset, pick in zip(offsets, picks, strict=True)])
    if rng is not None:
        rng.shuffle(indices)
    combined = parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
    return combined.select(indices.astype(np.int64))
