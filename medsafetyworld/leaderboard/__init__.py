"""Results records and the leaderboard built from them (SPEC 7)."""

from medsafetyworld.leaderboard.grouping import summarize
from medsafetyworld.leaderboard.record import (
    build_record,
    load_record,
    load_records,
    save_record,
    sha256_file,
    validate_record,
)
from medsafetyworld.leaderboard.summary import write_summary

__all__ = [
    "build_record",
    "load_record",
    "load_records",
    "save_record",
    "sha256_file",
    "summarize",
    "validate_record",
    "write_summary",
]
