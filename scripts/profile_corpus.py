"""Where the time of rendering a corpus goes: the first N tokens of a strategy's `tiny` corpus under
cProfile, split into the stream (raw documents), the strategy, the tokenizer, the rows (meta JSON and
fact counts), Parquet, and the rest of the writer. A warm-up render comes first, so imports and
caches are not counted. Profiling slows many small calls more than few large ones: read the shares,
not the speed (tests/test_benchmarks_corpus.py measures that).

    python scripts/profile_corpus.py [--strategy raw] [--tokens 500000] [--world DIR]
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import pstats
import tempfile
from pathlib import Path

from medsafetyworld.config import get_preset
from medsafetyworld.corpus.build import build_corpus
from medsafetyworld.corpus.tokenizer import load_tokenizer
from medsafetyworld.pipeline import make_world
from medsafetyworld.strategies import get_strategy
from medsafetyworld.world.io import load_world


def cumulative(stats: pstats.Stats, file_part: str, function: str) -> float:
    return sum(ct for (file, _, fn), (_, _, _, ct, _) in stats.stats.items() if file_part in file and fn == function)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--strategy", default="raw")
    p.add_argument("--tokens", type=int, default=500_000)
    p.add_argument("--world", type=Path, help="a `msw world --preset tiny` folder (default: built in a temp folder)")
    args = p.parse_args()
    preset = get_preset("tiny")
    tmp = Path(tempfile.mkdtemp())
    world_dir = args.world
    if world_dir is None:
        world_dir = tmp / "world"
        make_world(preset, 0, world_dir)
    world, splits = load_world(world_dir)
    tokenizer, strategy = load_tokenizer(world_dir / "tokenizer"), get_strategy(args.strategy)

    def render(tokens: int, out: Path) -> None:
        sized = dataclasses.replace(preset, corpus=dataclasses.replace(preset.corpus, token_budget=tokens))
        build_corpus(world, splits, tokenizer, strategy, sized, 1, out, world_hash="profile", progress=False)

    render(20_000, tmp / "warm")
    profile = cProfile.Profile()
    profile.runcall(render, args.tokens, tmp / "corpus")
    stats = pstats.Stats(profile)
    total = cumulative(stats, "corpus/build.py", "build_corpus")
    stream = cumulative(stats, "corpus/stream.py", "document")
    strategy_call = cumulative(stats, "strategies/base.py", "__call__")
    rows = cumulative(stats, "corpus/writer.py", "corpus_rows")
    tokenizer_s = cumulative(stats, "corpus/tokenizer.py", "encode_batch")
    parquet = cumulative(stats, "corpus/writer.py", "write_shard")
    parts = {
        "stream (raw documents)": stream,
        "strategy": strategy_call - stream,
        "rows (meta JSON, fact counts)": rows - strategy_call,
        "tokenizer": tokenizer_s,
        "Parquet": parquet,
    }
    parts["rest (setup, writer loop)"] = total - sum(parts.values())
    print(f"{args.strategy}, first {args.tokens:,} tokens of the tiny corpus: {total:.2f} s under cProfile")
    for name, seconds in parts.items():
        print(f"  {name:32s} {seconds:6.2f} s  {100 * seconds / total:5.1f}%")


if __name__ == "__main__":
    main()
