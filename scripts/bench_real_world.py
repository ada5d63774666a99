"""Documents per second through the real-web pipeline (read, keyword labeler, strategy, tokenizer,
shard writing) for filter, tag and reflect on a generated FineWeb-Edu-schema sample: `--files` shards of
`--docs` documents of about `--words` words each, every fifth with a few unsafe sentences. Each
strategy runs once into a fresh folder, with `--workers` local workers and one task per shard;
worker start-up is included, as a user pays it.

    python scripts/bench_real_world.py [--files 4] [--docs 1000] [--words 900] [--workers 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from medsafetyworld.config import get_preset
from medsafetyworld.pipeline import make_world
from medsafetyworld.real_world.fineweb import SAFE_SENTENCES as SAFE, UNSAFE_SENTENCES as UNSAFE, write_sample
from medsafetyworld.real_world.labelers import get_labeler
from medsafetyworld.real_world.pipeline import run_real_world


def document(i: int, words: int) -> str:
    sentences = [SAFE[(i + k) % len(SAFE)] for k in range(max(1, words // 9))]
    if i % 5 == 0:
        sentences[len(sentences) // 2: len(sentences) // 2 + 3] = [UNSAFE[i % 2]] * 3
    return " ".join(sentences)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--files", type=int, default=4)
    p.add_argument("--docs", type=int, default=1000, help="documents per file")
    p.add_argument("--words", type=int, default=900)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--strategies", default="filter,tag,reflect")
    p.add_argument("--world", type=Path, help="a world folder whose tokenizer to use (default: build micro's)")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp())
    world = args.world
    if world is None:
        world = tmp / "world"
        make_world(get_preset("micro"), 0, world)
    (tmp / "in").mkdir()
    n = 0
    for f in range(args.files):
        docs = [(f"doc-{n + i}", document(n + i, args.words)) for i in range(args.docs)]
        write_sample(tmp / "in" / f"shard-{f}.parquet", docs)
        n += args.docs
    print(f"{n} documents of about {args.words} words in {args.files} shards; {args.workers} workers")
    for strategy in args.strategies.split(","):
        start = time.perf_counter()
        manifest = run_real_world(tmp / "in", tmp / f"out-{strategy}", get_labeler("keyword"), strategy, world=world,
                                  workers=args.workers, seed=0, labeler_spec="keyword")
        seconds = time.perf_counter() - start
        print(f"{strategy:8s} {n / seconds:8.0f} documents/s ({seconds:.1f} s; {manifest['documents']} written, "
              f"{manifest['tokens']:,} tokens)")


if __name__ == "__main__":
    main()
