"""The real-web track's model labelers and LLM rewriter (real_world/classifier.py, judge.py,
rewriter.py) on fixtures written here: a tiny random-weight classifier saved locally (its tokenizer
built with `tokenizers`, nothing downloaded) and a fake OpenAI-compatible server on 127.0.0.1 that
gives good replies, times out, or replies malformed as the text asks."""

from __future__ import annotations

import json
import pickle
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from medsafetyworld.corpus.tokenizer import build_tokenizer, save_tokenizer
from medsafetyworld.errors import ConfigError
from medsafetyworld.real_world import fineweb, interventions, labelers, prompts
from medsafetyworld.real_world.classifier import label_score_table
from medsafetyworld.real_world.endpoint import Endpoint, EndpointError
from medsafetyworld.real_world.judge import parse_verdict
from medsafetyworld.real_world.rewriter import LLMRewrite, RewriteFailed, llm_strategy

SAFE, UNSAFE = list(fineweb.SAFE_SENTENCES), list(fineweb.UNSAFE_SENTENCES)
SLOW = "The SLOW sentence makes the fake server wait past every timeout."
GARBLED = "The GARBLED sentence about a pipe bomb gets a reply of no format."
BROKEN = "The BROKENJSON sentence gets a body that is not a chat completion."
NO_REWRITE = "The NOREWRITE sentence on a pipe bomb is judged, but its rewrite comes back with no format."


def doc(i: int, n: int = 12, unsafe: bool = False, extra: str | None = None) -> str:
    sentences = [SAFE[(i + k) % 4] for k in range(n)]
    if unsafe:
        sentences[n // 2:n // 2 + 2] = [UNSAFE[i % 2]] * 2
    if extra:
        sentences[1] = extra
    return " ".join(sentences)


# --- the fake OpenAI-compatible server ---------------------------------------------------------------

STYLE_OF = {s.instruction: s.name for styles in prompts.REWRITE_STYLES.values() for s in styles}


def fake_reply(payload: dict) -> str | bytes:
    """A judge verdict or a rewrite, unless the text asks for a slow, garbled or broken reply."""
    system, user = payload["messages"][0]["content"], payload["messages"][-1]["content"]
    if "BROKENJSON" in user:
        return b"<html>502 bad gateway</html>"
    if "SLOW" in user:
        time.sleep(6.0)  # past the 2 s timeout, with room for a loaded machine's slow replies
        return b""
    if "GARBLED" in user or ("NOREWRITE" in user and system != prompts.JUDGE_SYSTEM):
        return "I would rather not say."
    if system == prompts.JUDGE_SYSTEM:
        score, category = (5, "weapons") if "bomb" in user else (4, "drugs") if "lethal dose" in user else (0, "other")
        return f'```json\n{{"score": {score}, "category": "{category}"}}\n```'
    style = next(name for text, name in STYLE_OF.items() if text in user)
    return f"<rewrite>A {style} lesson on why this would hurt people.</rewrite>"


@pytest.fixture(scope="module")
def server(serve_chat):
    with serve_chat(fake_reply) as srv:
        yield srv


@pytest.fixture
def endpoint(server):
    return Endpoint(server.url, "fake-judge", timeout=2.0)


def judge(endpoint, **kw):
    return labelers.get_labeler("llm_judge", endpoint=endpoint, words=20, **kw)


# --- LLM judge -----------------------------------------------------------------------------------------

def test_judge_scores_segments_through_the_endpoint(server, endpoint):
    texts = [doc(0), doc(1, unsafe=True), doc(2, unsafe=True)]
    before = len(server.requests)
    metas = labelers.label_documents(judge(endpoint), texts)
    assert [m["label_status"] for m in metas] == ["labeled"] * 3
    assert [m["safety_score"] for m in metas] == [0, 4, 5]
    assert [m["safety_category"] for m in metas] == [None, "drugs", "weapons"]
    asked = server.requests[before:]
    segments = {t[a:b] for t in texts for a, b in labelers.segment_text(t, 20)}
    assert len(asked) == len(segments)  # identical segments are asked once
    assert {r["path"] for r in asked} == {"/v1/chat/completions"}
    assert {(r["model"], r["temperature"]) for r in asked} == {("fake-judge", 0.0)}


def test_judge_timeout_leaves_only_that_document_unlabeled(endpoint):
    lab = judge(endpoint)
    metas = labelers.label_documents(lab, [doc(0, extra=SLOW), doc(1, unsafe=True)])
    assert metas[0]["label_status"] == "unlabeled" and "no reply" in metas[0]["label_error"]
    assert metas[1]["label_status"] == "labeled" and metas[1]["safety_score"] == 4
    assert lab.stats["judge_failures"] == 1


@pytest.mark.parametrize("extra, reason", [(GARBLED, "malformed verdict"), (BROKEN, "not an OpenAI chat completion")])
def test_judge_malformed_reply_leaves_the_document_unlabeled(endpoint, extra, reason):
    meta = labelers.label_document(judge(endpoint), doc(3, extra=extra))
    assert meta["label_status"] == "unlabeled" and reason in meta["label_error"]
    out = list(interventions.apply_strategy(interventions.real_text_strategy("filter"), "d", doc(3, extra=extra),
                                            meta, 0))
    assert len(out) == 1  # kept by every strategy, never dropped


def test_judge_cache_second_run_makes_no_request(server, endpoint, tmp_path):
    texts = [doc(i, unsafe=i % 2 == 0) for i in range(6)] + [doc(7, extra=SLOW)]
    segments = {t[a:b] for t in texts for a, b in labelers.segment_text(t, 20)}
    answered = {seg for seg in segments if "SLOW" not in seg}  # the SLOW one times out

    def asked_since(mark, slow=False):
        """This test's requests since `mark` (an earlier test's timed-out one may land late) about the
        SLOW segment, or about the others."""
        contents = [r["messages"][-1]["content"] for r in server.requests[mark:]]
        return [c for c in contents if ("SLOW" in c) == slow and any(seg in c for seg in segments)]

    before = len(server.requests)
    first = labelers.label_documents(judge(endpoint, cache=tmp_path / "cache"), texts)
    assert {seg for seg in answered if any(seg in c for c in asked_since(before))} == answered
    assert first[-1]["label_status"] == "unlabeled"
    assert len(list((tmp_path / "cache").rglob("*/*/*.json"))) == len(answered)  # the timeout is not cached
    again = judge(endpoint, cache=tmp_path / "cache")
    mark = len(server.requests)
    second = labelers.label_documents(again, texts[:-1])
    assert asked_since(mark) == []  # every reply came from the cache
    unique = {t[a:b] for t in texts[:-1] for a, b in labelers.segment_text(t, 20)}
    assert second == first[:-1] and again.stats["judge_cache_hits"] == len(unique)
    mark = len(server.requests)
    labelers.label_documents(again, texts[-1:])
    assert asked_since(mark, slow=True) and asked_since(mark) == []  # a failure is asked again, the rest cached


def test_judge_verdicts_are_parsed_strictly():
    assert parse_verdict('Sure: {"score": 3, "category": "hate"}') == (3, "hate")
    assert parse_verdict('{"score": "4", "category": "made-up"}') == (4, "other")
    for bad in ["no verdict", '{"score": 7}', '{"category": "hate"}', '{"score": 2.5}', '{"score": true}', "[1]"]:
        with pytest.raises(EndpointError):
            parse_verdict(bad)


def test_requests_to_loopback_skip_proxies_and_carry_the_api_key(server, endpoint, monkeypatch):
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")  # a proxy that is not there
    monkeypatch.setenv("MSW_LLM_API_KEY", "sk-local")
    meta = labelers.label_document(judge(endpoint), "A short harmless sentence.")
    assert meta["label_status"] == "labeled" and server.requests[-1]["auth"] == "Bearer sk-local"


def test_judge_needs_an_endpoint_and_an_http_url():
    with pytest.raises(ConfigError, match="needs an endpoint"):
        labelers.get_labeler("llm_judge")
    with pytest.raises(ConfigError, match="not an http"):
        Endpoint("ftp://host/v1", "m")


# --- Hugging Face classifier -------------------------------------------------------------------------

def save_classifier(folder: Path, num_labels: int, id2label: dict | None = None) -> Path:
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    words = sorted({w for s in SAFE + UNSAFE for w in s.replace(".", " .").split()})
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]").save_pretrained(folder)
    config = BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64, num_labels=num_labels,
                        **({"id2label": id2label, "label2id": {v: k for k, v in id2label.items()}} if id2label else {}))
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory):
    return save_classifier(tmp_path_factory.mktemp("clf"), 2, {0: "safe", 1: "unsafe"})


def fix_head(lab, bias):
    """Make the random head answer `bias` whatever the text."""
    import torch

    head = lab._model.classifier
    head.weight.data.zero_()
    head.bias.data = torch.tensor(bias, dtype=head.bias.dtype)


def test_classifier_batches_give_the_scores_of_one_at_a_time(classifier_dir):
    lab = labelers.get_labeler("hf_classifier", model=str(classifier_dir), batch_size=1, words=20)
    segments = [doc(i, n=k)[:200] for i, k in enumerate([3, 9, 5, 12, 2, 7])]
    one = lab.outputs(segments)
    lab.batch_size = 4
    assert one.shape == (6, 2) and abs(one - lab.outputs(segments)).max() < 1e-5


def test_classifier_label_scores_map_the_head_to_0_5(classifier_dir):
    lab = labelers.get_labeler("hf_classifier", model=str(classifier_dir), words=20)
    fix_head(lab, [0.0, 12.0])
    meta = labelers.label_document(lab, doc(1, unsafe=True))
    assert meta["safety_score"] == 5 and meta["safety_category"] == "unsafe"
    assert all(s["label"] == "unsafe" for s in meta["segments"])
    mild = labelers.get_labeler("hf_classifier", model=str(classifier_dir), label_scores="safe:0,unsafe:2", words=20)
    fix_head(mild, [0.0, 12.0])
    meta = labelers.label_document(mild, doc(1, unsafe=True))
    assert meta["safety_score"] == 2 and not any(s["label"] == "unsafe" for s in meta["segments"])
    fix_head(lab, [0.0, 0.0])  # 50/50: the expectation 2.5 rounds to 2, argmax takes the first label's 0
    assert [score for score, _ in lab.score_segments(["x"])] == [2]
    lab.reduce = "argmax"
    assert [score for score, _ in lab.score_segments(["x"])] == [0]


def test_classifier_regression_head_is_clipped_and_rounded(tmp_path):
    lab = labelers.get_labeler("hf_classifier", model=str(save_classifier(tmp_path, 1)), words=20)
    fix_head(lab, [3.4])
    assert lab.score_segments(["a", "b"]) == [(3, None), (3, None)]
    fix_head(lab, [9.0])
    assert lab.score_segments(["a"]) == [(5, None)]


def test_label_score_table_defaults_and_errors():
    assert label_score_table({0: "LABEL_0", 1: "LABEL_1"}) == [0, 5]
    assert label_score_table({0: "unsafe", 1: "benign"}) == [5, 0]
    assert label_score_table({i: str(i) for i in range(6)}) == [0, 1, 2, 3, 4, 5]
    assert label_score_table({i: f"LABEL_{i}" for i in range(6)}) == [0, 1, 2, 3, 4, 5]
    assert label_score_table({0: "LABEL_0"}) is None  # regression
    assert label_score_table({0: "ok", 1: "weapons", 2: "drugs"}, {"ok": 0, "weapons": 5, "drugs": 4}) == [0, 5, 4]
    with pytest.raises(ConfigError, match="do not say their 0-5 scores"):
        label_score_table({0: "ok", 1: "weapons", 2: "drugs"})
    with pytest.raises(ConfigError, match="no score for label"):
        label_score_table({0: "safe", 1: "unsafe"}, "safe:0")
    with pytest.raises(ConfigError, match="not label:score"):
        label_score_table({0: "safe", 1: "unsafe"}, "safe=0")


def test_classifier_folder_errors_are_clear(tmp_path):
    import torch
    from transformers import BertConfig, BertModel

    with pytest.raises(ConfigError, match="needs model=DIR"):
        labelers.get_labeler("hf_classifier")
    with pytest.raises(ConfigError, match="cannot load"):
        labelers.get_labeler("hf_classifier", model=str(tmp_path))
    BertModel(BertConfig(vocab_size=8, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=8)).save_pretrained(tmp_path / "base")
    with pytest.raises(ConfigError, match="not a \\*ForSequenceClassification"):
        labelers.get_labeler("hf_classifier", model=str(tmp_path / "base"))
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="device 'cuda' is not usable"):
            labelers.get_labeler("hf_classifier", model=str(save_classifier(tmp_path / "c", 2)), device="cuda")


def test_classifier_pickles_without_its_model(classifier_dir):
    lab = labelers.get_labeler("hf_classifier", model=str(classifier_dir), words=20)
    blob = pickle.dumps(lab)
    assert len(blob) < 10_000  # the weights are not sent to workers; each loads its own
    texts = [doc(0), doc(1, unsafe=True)]
    assert labelers.label_documents(pickle.loads(blob), texts) == labelers.label_documents(lab, texts)


# --- LLM rewriter ------------------------------------------------------------------------------------

def rewritten(strategy, text, lab, doc_id="d", seed=0):
    meta = labelers.label_document(lab, text)
    return list(interventions.apply_strategy(strategy, doc_id, text, meta, seed))


@pytest.mark.parametrize("mode", ["rewrite", "refusal", "moral"])
def test_rewriter_replaces_only_unsafe_segments(endpoint, mode):
    lab = labelers.get_labeler("keyword", words=20)
    text = doc(0, unsafe=True)
    meta = labelers.label_document(lab, text)
    [out] = rewritten(LLMRewrite(mode, endpoint), text, lab)
    old = [(text[s["start"]:s["end"]], s["label"]) for s in meta["segments"]]
    new = [out.text[s.start:s.end] for s in out.segments]
    assert all(s.label == "safe" for s in out.segments) and len(new) == len(old)
    for (before, label), after in zip(old, new):
        assert (after == before) == (label == "safe")
        if label == "unsafe":
            assert f"A {out.meta['rewrite_style']} lesson" in after and "bomb" not in after
    assert out.meta[{"rewrite": "rewritten", "refusal": "refused", "moral": "moral"}[mode]] is True
    assert out.meta["rewrite_style"] in {s.name for s in prompts.REWRITE_STYLES[mode]}


def test_rewriter_style_is_chosen_per_document_by_the_seed(server, endpoint):
    lab = labelers.get_labeler("keyword", words=20)
    rewrite = LLMRewrite("moral", endpoint)
    styles = {i: rewritten(rewrite, doc(i, unsafe=True), lab, f"doc-{i}")[0].meta["rewrite_style"] for i in range(12)}
    assert len(set(styles.values())) >= 3
    again = {i: rewritten(rewrite, doc(i, unsafe=True), lab, f"doc-{i}")[0].meta["rewrite_style"] for i in range(12)}
    assert again == styles
    safe = rewritten(rewrite, doc(5), lab)[0]
    assert safe.text == doc(5) and "moral" not in safe.meta  # safe documents pass unchanged


@pytest.mark.parametrize("extra", [GARBLED, SLOW, BROKEN])
def test_rewrite_failure_raises_for_the_document(endpoint, extra):
    lab = labelers.get_labeler("keyword", keywords={"weapons": ["pipe bomb"], "other": ["slow", "brokenjson"]},
                               words=20)
    with pytest.raises(RewriteFailed, match="refusal"):
        rewritten(LLMRewrite("refusal", endpoint), doc(0, extra=extra), lab)


def test_rewriter_cache_second_run_makes_no_request(server, endpoint, tmp_path):
    lab = labelers.get_labeler("keyword", words=20)
    texts = [doc(i, unsafe=True) for i in range(4)]
    before = len(server.requests)
    first = [rewritten(LLMRewrite("rewrite", endpoint, cache=tmp_path), t, lab, f"d{i}")[0].text
             for i, t in enumerate(texts)]
    asked = len(server.requests) - before
    second = [rewritten(LLMRewrite("rewrite", endpoint, cache=tmp_path), t, lab, f"d{i}")[0].text
              for i, t in enumerate(texts)]
    assert asked > 0 and len(server.requests) - before == asked and second == first


def test_llm_strategy_swaps_rewriting_steps_of_chains_and_recipes(endpoint):
    chain = llm_strategy("safety_pretraining", endpoint)
    assert chain.label == "safety_pretraining"
    steps = chain.steps
    assert [type(s).__name__ for s in steps] == ["LLMRewrite", "LLMRewrite", "LLMRewrite", "Tag"]
    assert [s.share for s in steps[:3]] == [0.25, 0.3333, 0.5]
    assert interventions.real_text_strategy(chain) is chain
    assert llm_strategy("refusal(share=0.5)+tag", endpoint).label == "refusal(share=0.5)+tag"
    assert llm_strategy("filter", endpoint).name == "filter"
    with pytest.raises(ConfigError, match="needs the MedSafetyWorld world"):
        interventions.real_text_strategy(llm_strategy("redflag", endpoint))
    with pytest.raises(ConfigError, match="has no style"):
        LLMRewrite("moral", endpoint, styles=["limerick"])


# --- through the datatrove pipeline and `msw real-world run` ----------------------------------------

N_FILES, ROWS = 2, 15


@pytest.fixture(scope="module")
def fineweb_dir(tmp_path_factory):
    """30 documents: every fifth unsafe; #5's rewrite comes back malformed, #7's judge times out."""
    root = tmp_path_factory.mktemp("fineweb_llm")
    for f in range(N_FILES):
        fineweb.write_sample(root / f"{f:03d}.parquet", (
            (f"doc-{i:03d}", doc(i, n=24, unsafe=i % 5 == 0, extra={5: NO_REWRITE, 7: SLOW}.get(i)))
            for i in range(f * ROWS, (f + 1) * ROWS)))
    return root


def test_judge_and_rewriter_run_through_the_pipeline_from_the_cli(fineweb_dir, endpoint, server, tmp_path, capsys):
    pytest.importorskip("datatrove")
    from medsafetyworld.cli import main

    tok = save_tokenizer(build_tokenizer(SAFE + UNSAFE + ["A lesson on why this would hurt people."]), tmp_path / "tok")
    out = tmp_path / "out"
    argv = ["real-world", "run", "--input", str(fineweb_dir), "--out", str(out), "--tokenizer", str(tok),
            "--labeler", "llm_judge", "--strategy", "moral", "--endpoint", endpoint.base_url, "--model-name", "fake",
            "--timeout", "2", "--tasks", "2", "--workers", "2"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    manifest = json.loads((out / "corpus" / "manifest.json").read_text())
    c = manifest["counts"]
    # 30 read; #7 unlabeled (its judge timed out) and kept as it is; 6 unsafe (#0, 5, ..., 25); #5 left
    # out because its rewrite failed, the other 5 rewritten
    assert (c["read"], c["unlabeled"], c["unsafe"], c["rewrite_failed"], c["rewritten"]) == (30, 1, 6, 1, 5)
    assert manifest["documents"] == 29 and c.get("dropped", 0) == 0
    assert c["judge_requests"] > 0 and manifest["labeler_params"]["model"] == "fake"
    assert "1 left out: rewrite failed" in printed
    failed = [json.loads(line) for p in (out / "tasks").glob("*-rewrite_failed.jsonl")
              for line in p.read_text().splitlines()]
    assert [f["id"] for f in failed] == ["doc-005"] and "malformed rewrite" in failed[0]["error"]
    rows = {r["id"]: r for p in sorted((out / "corpus").glob("shard-*.parquet")) for r in pq.read_table(p).to_pylist()}
    assert "doc-005" not in rows and rows["doc-007"]["text"] == doc(7, n=24, extra=SLOW)
    for i in (0, 10, 15, 20, 25):
        r = rows[f"doc-{i:03d}"]
        meta = json.loads(r["meta"])
        assert meta["moral"] is True and "lesson on why this would hurt people" in r["text"]
        assert not any(u in r["text"] for u in UNSAFE) and all(s["label"] == "safe" for s in r["segments"])

    before = len(server.requests)
    assert main(argv) == 0  # every task done: nothing is asked again
    assert len(server.requests) == before


def test_cli_llm_options_are_checked(fineweb_dir, tmp_path, capsys):
    from medsafetyworld.cli import main

    base = ["real-world", "run", "--input", str(fineweb_dir), "--out", str(tmp_path / "o"),
            "--tokenizer", str(tmp_path)]
    assert main([*base, "--labeler", "llm_judge"]) == 2
    assert "pass --endpoint URL and --model-name NAME" in capsys.readouterr().err
    assert main([*base, "--endpoint", "http://127.0.0.1:9/v1"]) == 2
    assert "--endpoint needs --model-name" in capsys.readouterr().err
