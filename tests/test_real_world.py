"""The real-web track (real_world/, issue 15 part 1) on FineWeb-Edu fixtures written here: labelers,
interventions, the datatrove pipeline with 2 workers, resuming, and the tokenized corpus."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from medsafetyworld.corpus.tokenizer import build_tokenizer, save_tokenizer
from medsafetyworld.errors import ConfigError
from medsafetyworld.real_world import fineweb, interventions, labelers

SAFE_SENTENCES, UNSAFE_SENTENCES = list(fineweb.SAFE_SENTENCES), list(fineweb.UNSAFE_SENTENCES)
N_FILES, ROWS = 4, 75  # 300 documents; every fifth is unsafe


def make_doc(i: int) -> tuple[str, bool]:
    unsafe = i % 5 == 0
    sentences = [SAFE_SENTENCES[(i + k) % 4] for k in range(30)]
    if unsafe:
        sentences[20:24] = [UNSAFE_SENTENCES[i % 2]] * 4
    return " ".join(sentences), unsafe


@pytest.fixture(scope="module")
def fineweb_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("fineweb")
    for f in range(N_FILES):
        fineweb.write_sample(root / f"{f:03d}_00000.parquet",
                             ((f"<urn:uuid:{i:08d}>", make_doc(i)[0]) for i in range(f * ROWS, (f + 1) * ROWS)))
    return root


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    texts = SAFE_SENTENCES + UNSAFE_SENTENCES
    return str(save_tokenizer(build_tokenizer(texts), tmp_path_factory.mktemp("tok")))


@pytest.fixture(scope="module")
def labeled_jsonl(tmp_path_factory):
    path = tmp_path_factory.mktemp("lab") / "labeled.jsonl"
    # paragraphs like the segments it will score: safe ones, and safe text around unsafe sentences
    rows = [{"text": " ".join(SAFE_SENTENCES[(k + j) % 4] for j in range(10)), "label": 0} for k in range(8)]
    rows += [{"text": " ".join([SAFE_SENTENCES[(k + j) % 4] for j in range(6)] + [UNSAFE_SENTENCES[k % 2]] * 4),
              "label": 5, "category": ["weapons", "drugs"][k % 2]} for k in range(8)]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


def test_schema_and_limit(fineweb_dir):
    assert fineweb.COLUMNS == ("text", "id", "dump", "url", "file_path", "language", "language_score",
                               "token_count", "score", "int_score")
    rows = list(fineweb.read_local(fineweb_dir, limit=110))
    assert len(rows) == 110 and set(rows[0]) == set(fineweb.COLUMNS)
    assert fineweb.hub_path("HuggingFaceFW/fineweb-edu", "sample-10BT") == "hf://datasets/HuggingFaceFW/fineweb-edu/sample/10BT"


def test_hub_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(fineweb, "online", lambda *a, **k: False)
    with pytest.raises(ConfigError, match="not reachable"):
        fineweb.require_hub("HuggingFaceFW/fineweb-edu", "sample-10BT")


def test_segments_partition_text_at_sentence_ends():
    text, _ = make_doc(0)
    spans = labelers.segment_text(text, 100)
    assert spans[0][0] == 0 and spans[-1][1] == len(text)
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    assert all(text[a:b].rstrip().endswith(".") for a, b in spans)
    assert all(len(text[a:b].split()) >= 100 for a, b in spans[:-1])


@pytest.mark.parametrize("name", ["keyword", "tfidf"])
def test_labelers_find_the_unsafe_documents(name, labeled_jsonl):
    kw = {"train": str(labeled_jsonl)} if name == "tfidf" else {}
    lab = labelers.get_labeler(name, **kw)
    for i in range(20):
        text, unsafe = make_doc(i)
        meta = labelers.label_document(lab, text)
        assert meta["label_status"] == "labeled"
        assert 0 <= meta["safety_score"] <= 5
        assert any(s["label"] == "unsafe" for s in meta["segments"]) == unsafe, (name, i)
        if unsafe:
            assert meta["safety_category"] == ("weapons" if i % 2 == 0 else "drugs")


def test_labeler_failure_leaves_document_unlabeled():
    class Broken(labelers.Labeler):
        def score_segments(self, texts):
            raise TimeoutError("no reply")

    meta = labelers.label_document(Broken(), "Some text.")
    assert meta["label_status"] == "unlabeled" and "TimeoutError" in meta["label_error"]
    out = list(interventions.apply_strategy(interventions.real_text_strategy("filter"), "d", "Some text.", meta, 0))
    assert len(out) == 1 and out[0].text == "Some text."  # kept, untouched


def test_interventions_filter_tag_reflect():
    lab = labelers.get_labeler("keyword")
    safe_text, _ = make_doc(1)
    unsafe_text, _ = make_doc(0)
    safe, unsafe = (labelers.label_document(lab, t) for t in (safe_text, unsafe_text))
    run = lambda spec, text, meta: list(interventions.apply_strategy(  # noqa: E731
        interventions.real_text_strategy(spec), "d", text, meta, 0))
    assert run("filter", unsafe_text, unsafe) == [] and len(run("filter", safe_text, safe)) == 1
    tagged = run("tag(p=0.5)", unsafe_text, unsafe)[0]
    assert "<potentially unsafe content>" in tagged.text
    assert tagged.text.replace("<potentially unsafe content> ", "") == unsafe_text
    for s in tagged.segments:  # only unsafe segments are tagged
        assert ("<potentially unsafe content>" in tagged.text[s.start:s.end]) <= (s.label == "unsafe")
    assert run("tag", safe_text, safe)[0].text == safe_text
    reflected = run("reflect", unsafe_text, unsafe)[0].text
    n_segments = len(unsafe["segments"])
    assert reflected.count("<think>") == n_segments
    assert "<think> Unsafe weapons </think>" in reflected and "<think> Safe </think>" in reflected
    with pytest.raises(ConfigError, match="needs the MedSafetyWorld world"):
        interventions.real_text_strategy("rewrite")
    with pytest.raises(ConfigError, match="needs the MedSafetyWorld world"):
        interventions.real_text_strategy("safety_pretraining")


def _shard_docs(corpus: Path) -> dict[str, int]:
    return {p.name: pq.read_metadata(p).num_rows for p in sorted(corpus.glob("shard-*.parquet"))}


def test_pipeline_two_workers_resume_and_token_stream(fineweb_dir, tokenizer_dir, tmp_path):
    pytest.importorskip("datatrove")
    from medsafetyworld.real_world.pipeline import run_real_world
    from medsafetyworld.training.data import load_token_stream

    out = tmp_path / "out"
    lab = labelers.get_labeler("keyword")
    m = run_real_world(fineweb_dir, out, lab, "filter", tokenizer=tokenizer_dir, tasks=4, workers=2, limit=280)
    assert m["counts"]["read"] == 280 and m["counts"]["unsafe"] == 56 and m["counts"]["dropped"] == 56
    assert m["documents"] == 224 and m["strategy"] == "filter"
    corpus = out / "corpus"
    before = {p.name: p.stat().st_mtime_ns for p in corpus.glob("shard-*.parquet")}
    assert len(before) == 4

    # task 2's output and completion marker removed (as if killed): the rerun redoes only task 2
    (corpus / "shard-00002.parquet").unlink()
    (out / "logs" / "completions" / "00002").unlink()
    m2 = run_real_world(fineweb_dir, out, lab, "filter", tokenizer=tokenizer_dir, tasks=4, workers=2, limit=280)
    after = {p.name: p.stat().st_mtime_ns for p in corpus.glob("shard-*.parquet")}
    assert {k: v for k, v in after.items() if k != "shard-00002.parquet"} == \
           {k: v for k, v in before.items() if k != "shard-00002.parquet"}
    assert m2["documents"] == 224 and m2["corpus_hash"] == m["corpus_hash"]

    from transformers import AutoTokenizer
    eos = AutoTokenizer.from_pretrained(tokenizer_dir).eos_token_id
    stream = load_token_stream(corpus, eos)
    assert int((stream == eos).sum()) == 224 and len(stream) == m["tokens"]
    row = pq.read_table(corpus / "shard-00000.parquet").to_pylist()[0]
    assert json.loads(row["meta"])["dump"] == "CC-MAIN-2024-10" and row["kind"] == "web"


def test_pipeline_reflect_tag_tfidf(fineweb_dir, tokenizer_dir, labeled_jsonl, tmp_path):
    pytest.importorskip("datatrove")
    from medsafetyworld.real_world.pipeline import run_real_world

    lab = labelers.get_labeler("tfidf", train=str(labeled_jsonl))
    m = run_real_world(fineweb_dir, tmp_path / "r", lab, "reflect", tokenizer=tokenizer_dir, tasks=2, workers=2,
                       limit=100)
    web = m["per_kind"]["web"]
    assert m["documents"] == 100 and web["unsafe_documents"] == 20
    assert web["count:<think> Unsafe"] == web["unsafe_segments"] >= 20
    m = run_real_world(fineweb_dir, tmp_path / "t", lab, "tag", tokenizer=tokenizer_dir, tasks=2, workers=2,
                       limit=100)
    assert m["documents"] == 100 and m["per_kind"]["web"]["count:<potentially unsafe content>"] > 0


def test_cli_plugin_hook(fineweb_dir, tokenizer_dir, tmp_path):
    pytest.importorskip("datatrove")
    r = subprocess.run([sys.executable, "-m", "medsafetyworld.cli", "real-world", "run", "--input", str(fineweb_dir),
                        "--out", str(tmp_path / "o"), "--tokenizer", tokenizer_dir, "--strategy", "filter",
                        "--limit", "40", "--tasks", "2", "--workers", "1"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "read 40 documents" in r.stdout and "32 written (8 dropped by filter)" in r.stdout
    r = subprocess.run([sys.executable, "-m", "medsafetyworld.cli", "real-world", "run", "--input", str(fineweb_dir),
                        "--out", str(tmp_path / "o2"), "--tokenizer", tokenizer_dir, "--strategy", "rewrite"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "needs the MedSafetyWorld world" in r.stderr


def test_package_never_imports_real_world():
    root = Path(__file__).resolve().parents[1] / "medsafetyworld"
    assert not [p for p in root.rglob("*.py") if "real_world" in p.read_text()]


def test_labeled_jsonl_numbers_read_as_one_scale_per_file(tmp_path):
    """0/1 labels are binary; once any label exceeds 1 the file is 0-5 scores, so a 1 is safe there."""
    from medsafetyworld.errors import DataError
    from medsafetyworld.real_world.labelers import read_labeled_jsonl

    def ys(labels):
        path = tmp_path / "l.jsonl"
        path.write_text("\n".join(json.dumps({"text": f"t{i}", "label": y}) for i, y in enumerate(labels)))
        return read_labeled_jsonl(path)[1]

    assert ys([0, 1, 1]) == [0, 1, 1]
    assert ys([1, 2, 3, 5, 0]) == [0, 0, 1, 1, 0]
    assert ys(["safe", "UNSAFE", True, 4]) == [0, 1, 1, 1]
    for bad in (7, -1, None, [1]):
        with pytest.raises(DataError):
            ys([0, 5, bad])
