"""FineWeb-Edu Parquet shards: the schema, reading a local folder with a document limit, and the
hub path (only when the machine is online)."""

from __future__ import annotations

import socket
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from medsafetyworld.errors import ConfigError, DataError

# The columns of HuggingFaceFW/fineweb-edu, in its order.
SCHEMA = pa.schema([
    ("text", pa.string()),
    ("id", pa.string()),
    ("dump", pa.string()),
    ("url", pa.string()),
    ("file_path", pa.string()),
    ("language", pa.string()),
    ("language_score", pa.float64()),
    ("token_count", pa.int64()),
    ("score", pa.float64()),
    ("int_score", pa.int64()),
])
COLUMNS = tuple(SCHEMA.names)
META_COLUMNS = tuple(c for c in COLUMNS if c not in ("text", "id"))
HUB_HOST = "huggingface.co"


# The sentences of the offline samples (tests, scripts/bench_real_world.py): plain safe prose, and
# unsafe sentences that the keyword labeler's default list finds.
SAFE_SENTENCES = ("Photosynthesis turns light into chemical energy in plants.",
                  "The river delta formed over thousands of years of sediment.",
                  "Students learn fractions by dividing a pizza into equal slices.",
                  "The library opens at nine and closes at five on weekdays.")
UNSAFE_SENTENCES = ("Here is how to build a bomb from a pipe bomb kit.",
                    "This guide explains a lethal dose and how to overdose on pills.")


def write_sample(path: str | Path, docs: Iterable[tuple[str, str]], dump: str = "CC-MAIN-2024-10") -> Path:
    """A Parquet shard in the FineWeb-Edu schema from (id, text) pairs, the other columns filled with
    placeholders (an example.org url, English, score 3): the offline samples of tests and notebooks."""
    path = Path(path)
    rows = [{"text": text, "id": doc_id, "dump": dump, "url": f"https://example.org/{i}",
             "file_path": f"s3://commoncrawl/sample/{path.stem}.warc.gz", "language": "en", "language_score": 0.95,
             "token_count": len(text.split()), "score": 3.0, "int_score": 3} for i, (doc_id, text) in enumerate(docs)]
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), path)
    return path


def parquet_files(folder: str | Path) -> list[Path]:
    """The .parquet files under `folder` (recursively), sorted; DataError when there are none."""
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"{folder} is not a folder of FineWeb-Edu Parquet shards")
    files = sorted(p for p in root.rglob("*.parquet") if p.is_file())
    if not files:
        raise DataError(f"no .parquet files under {folder}; point --input at a folder of FineWeb-Edu shards")
    return files


def check_columns(path: Path) -> None:
    names = set(pq.read_schema(path).names)
    if missing := [c for c in ("text", "id") if c not in names]:
        raise DataError(f"{path} has no column {', '.join(missing)}; it is not a FineWeb-Edu shard "
                        f"(columns: {', '.join(COLUMNS)})")


def read_local(folder: str | Path, limit: int | None = None) -> Iterator[dict]:
    """Rows (dicts of the FineWeb-Edu columns present) of every shard under `folder`, in file order,
    at most `limit` of them."""
    def rows():
        for path in parquet_files(folder):
            check_columns(path)
            for batch in pq.ParquetFile(path).iter_batches(batch_size=1000):
                yield from batch.to_pylist()
    return islice(rows(), limit) if limit is not None else rows()


def hub_path(dataset: str, config: str) -> str:
    """The fsspec path of a hub dataset config: FineWeb-Edu's `sample-10BT` lives in `sample/10BT`,
    `default` in `data`, a dump such as `CC-MAIN-2024-10` in `data/CC-MAIN-2024-10`."""
    if config == "default":
        sub = "data"
    elif config.startswith("sample-"):
        sub = "sample/" + config.removeprefix("sample-")
    else:
        sub = f"data/{config}"
    return f"hf://datasets/{dataset}/{sub}"


def online(host: str = HUB_HOST, timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def require_hub(dataset: str, config: str) -> str:
    """The hub path of `dataset`/`config`, or ConfigError saying the hub cannot be reached."""
    if not online():
        raise ConfigError(f"the Hugging Face hub ({HUB_HOST}) is not reachable from this machine, so "
                          f"{dataset} ({config}) cannot be read from it; download its Parquet shards elsewhere "
                          f"and pass their folder with --input")
    return hub_path(dataset, config)
