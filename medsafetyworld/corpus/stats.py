"""What a rendered corpus holds, counted from its Parquet shards (`msw corpus stats`).

Documents, tokens, unsafe documents and segments, and the safety markers the strategies insert,
per document kind, so that several corpora can be put side by side: every strategy must get the
same token budget (SPEC 3), and the markers show what the strategy did with it.

The shards are read one record batch at a time and only the columns counted here (`kind`, `text`,
`segments`, `n_tokens`; never `input_ids`), so memory stays flat whatever the corpus size.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from medsafetyworld.corpus.document import UNSAFE
from medsafetyworld.corpus.shards import MARKERS, load_manifest
from medsafetyworld.errors import DataError

COLUMNS = ("documents", "tokens", "unsafe_documents", "unsafe_segments", *MARKERS)
ALL = "all"
READ_COLUMNS = ["kind", "text", "segments", "n_tokens"]
BATCH_ROWS = 4096


def _corpus_manifest(corpus_dir: Path) -> dict:
    """load_manifest's manifest, checked to name its shards and its token budget."""
    manifest = load_manifest(corpus_dir)
    try:
        [shard["file"] for shard in manifest["shards"]]
        int(manifest["token_budget"])
    except (KeyError, TypeError, ValueError):
        raise DataError(f"{Path(corpus_dir) / 'manifest.json'} is not a corpus manifest (no shard list or token "
                        f"budget); rebuild it with `msw corpus --out {corpus_dir}`") from None
    return manifest


def _shard_paths(corpus_dir: Path, manifest: dict) -> list[Path]:
    paths = [Path(corpus_dir) / shard["file"] for shard in manifest["shards"]]
    for path in paths:
        if not path.is_file():
            raise DataError(f"shard {path} named by the manifest is missing; rebuild the corpus")
    return paths


def _batch_counts(batch: pa.RecordBatch) -> pd.DataFrame:
    """Per-document counts of one record batch, one row per document plus its kind."""
    n = batch.num_rows
    segments = batch.column("segments")
    labels = pc.struct_field(pc.list_flatten(segments), "label")
    parents = pc.list_parent_indices(segments).to_numpy(zero_copy_only=False)
    unsafe = pc.fill_null(pc.equal(labels, UNSAFE), False).to_numpy(zero_copy_only=False)
    unsafe_segments = np.bincount(parents, weights=unsafe, minlength=n).astype(np.int64)
    text = batch.column("text")
    counts = {
        "kind": batch.column("kind").to_numpy(zero_copy_only=False),
        "documents": np.ones(n, dtype=np.int64),
        "tokens": pc.fill_null(batch.column("n_tokens"), 0).to_numpy(zero_copy_only=False).astype(np.int64),
        "unsafe_documents": (unsafe_segments > 0).astype(np.int64),
        "unsafe_segments": unsafe_segments,
    }
    for column, marker in MARKERS.items():
        found = pc.fill_null(pc.count_substring(text, marker), 0)
        counts[column] = found.to_numpy(zero_copy_only=False).astype(np.int64)
    return pd.DataFrame(counts)


def _batches(paths: Iterable[Path]):
    for path in paths:
        try:
            shard = pq.ParquetFile(path)
            missing = set(READ_COLUMNS) - set(shard.schema_arrow.names)
            if missing:
                raise DataError(f"shard {path} lacks the column(s) {', '.join(sorted(missing))}; rebuild the corpus")
            yield from shard.iter_batches(batch_size=BATCH_ROWS, columns=READ_COLUMNS)
        except (pa.ArrowException, OSError) as exc:
            raise DataError(f"cannot read shard {path} ({exc}); rebuild the corpus") from None


def corpus_stats(corpus_dir: Path | str) -> pd.DataFrame:
    """One row per document kind (sorted) and a last row "all", the columns of COLUMNS (int64)."""
    corpus_dir = Path(corpus_dir)
    paths = _shard_paths(corpus_dir, _corpus_manifest(corpus_dir))
    totals = pd.DataFrame(columns=list(COLUMNS), dtype=np.int64)
    for batch in _batches(paths):
        if batch.num_rows:
            per_kind = _batch_counts(batch).groupby("kind", sort=False).sum()
            totals = per_kind if totals.empty else totals.add(per_kind, fill_value=0)
    totals = totals.reindex(columns=list(COLUMNS)).fillna(0).astype(np.int64).sort_index()
    totals.loc[ALL] = totals.sum(axis=0)
    totals.index.name = "kind"
    return totals.astype(np.int64)


def corpus_label(corpus_dir: Path | str, manifest: dict) -> str:
    """`folder (strategy)`, the strategy as the manifest records it."""
    return f"{Path(corpus_dir).name} ({manifest.get('strategy', '?')})"


def compare_corpora(dirs: Sequence[Path | str]) -> pd.DataFrame:
    """The corpora side by side: one column per corpus, named `folder (strategy)` (the full path when two
    folders share a name); rows indexed by (kind, statistic), "all" first, its `token_budget` (from the
    manifest) right after its `tokens`, so unequal budgets show at a glance."""
    if not dirs:
        raise DataError("no corpus folder given; pass one or more folders written by `msw corpus`")
    manifests = [_corpus_manifest(Path(d)) for d in dirs]
    labels = [corpus_label(d, m) for d, m in zip(dirs, manifests)]
    if len(set(labels)) < len(labels):
        labels = [f"{Path(d)} ({m.get('strategy', '?')})" for d, m in zip(dirs, manifests)]
    if len(set(labels)) < len(labels):
        raise DataError("the same corpus folder is given twice; pass each folder once")
    columns = {}
    for d, manifest, label in zip(dirs, manifests, labels):
        stats = corpus_stats(d)
        kinds = [ALL, *(k for k in stats.index if k != ALL)]
        long = stats.loc[kinds].stack()
        budget = pd.Series([int(manifest["token_budget"])], index=pd.MultiIndex.from_tuples([(ALL, "token_budget")]))
        columns[label] = pd.concat([long, budget])
    table = pd.concat(columns, axis=1, sort=False).fillna(0).astype(np.int64)
    kinds = [ALL, *sorted({k for k, _ in table.index} - {ALL})]
    statistics = ["documents", "tokens", "token_budget", *COLUMNS[2:]]
    order = [(k, s) for k in kinds for s in statistics if (k, s) in table.index]
    table = table.loc[order]
    table.index = pd.MultiIndex.from_tuples(order, names=["kind", "statistic"])
    table.columns.name = "corpus"
    return table


def budget_note(table: pd.DataFrame) -> str:
    """One line: whether every corpus of `compare_corpora`'s table had the same token budget."""
    budgets = table.loc[(ALL, "token_budget")]
    tokens = table.loc[(ALL, "tokens")]
    if budgets.nunique() == 1:
        return (f"token budget {int(budgets.iloc[0]):,} for every corpus; tokens written "
                f"{int(tokens.min()):,} to {int(tokens.max()):,}")
    return "token budgets differ: " + ", ".join(f"{c} {int(b):,}" for c, b in budgets.items())
