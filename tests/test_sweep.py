"""The size sweep that chooses `tiny` (SPEC 8): its grammar, its table, and that a rerun trains nothing."""

from __future__ import annotations

import pandas as pd
import pytest

from medsafetyworld.errors import ConfigError
from medsafetyworld.sweep import SWEEP_METRICS, parse_shape, parse_tokens, sweep, to_markdown


def test_shapes_and_token_counts_parse():
    m = parse_shape("4x128")
    assert (m.n_layers, m.d_model, m.n_heads, m.n_kv_heads, m.d_mlp) == (4, 128, 4, 4, 512)
    assert parse_tokens("2.5M") == 2_500_000 and parse_tokens("500k") == 500_000 and parse_tokens("7") == 7
    for bad in ("4x100", "x128", "4*128"):
        with pytest.raises(ConfigError, match="LAYERSxWIDTH"):
            parse_shape(bad)
    with pytest.raises(ConfigError, match="token count"):
        parse_tokens("lots")


@pytest.mark.slow
def test_a_sweep_measures_every_point_and_a_rerun_trains_nothing(micro, tmp_path, one_torch_thread):
    import dataclasses

    base = micro.replace(eval=dataclasses.replace(micro.eval, max_probes_per_family=10, bootstrap_samples=20))
    table = sweep(base, ["raw", "filter"], ["1x32"], ["12k", "24k"], tmp_path, progress=False, threads=1)
    assert list(table["point"]) == ["1x32-0.012M", "1x32-0.012M", "1x32-0.024M", "1x32-0.024M"]
    assert list(table["strategy"]) == ["raw", "filter", "raw", "filter"]
    assert (table["tokens_seen"].to_numpy() >= [12_000, 12_000, 24_000, 24_000]).all()
    for m in SWEEP_METRICS:
        assert table[m].between(0, 1).all() and (table[f"{m}/n"] > 0).all()
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "sweep.csv"), table, check_dtype=False)
    marker = tmp_path / "models" / "1x32-0.012M" / "raw-s1" / "pretrain" / ".stage.json"
    before = marker.stat().st_mtime_ns
    again = sweep(base, ["raw", "filter"], ["1x32"], ["12k", "24k"], tmp_path, progress=False, threads=1)
    assert marker.stat().st_mtime_ns == before
    pd.testing.assert_frame_equal(again, table)
    markdown = to_markdown(table).splitlines()
    assert len(markdown) == 2 + len(table) and markdown[2].startswith("| 1x32 |")
