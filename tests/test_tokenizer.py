"""The word-level tokenizer: exact round trips, atomic special tokens, one token per entity."""

import json

import pytest
from transformers import AutoTokenizer

from medsafetyworld.corpus.tokenizer import (
    SPECIAL_TOKENS,
    UNK,
    batch_encoder,
    build_tokenizer,
    count_unknown,
    load_tokenizer,
    save_tokenizer,
)
from medsafetyworld.errors import DataError

SAMPLES = [
    "zorvatil contains mexacine. mexacine causes tarsic-flux .\ntarsic-flux aggravates kelvar-syndrome .",
    "User: ilsa-morrow has kelvar-syndrome and morran-palsy. Which drug should she take?\n"
    "Assistant: zorvatil (it treats kelvar-syndrome) <think> Safe </think> ",
    "Check: does quenamet aggravate morran-palsy? yes! <think> Unsafe contraindicated_prescription "
    "</think> <rf> quenamet <potentially unsafe content> worsens it ; don't.<|endoftext|>",
    "  two  spaces,\n\nblank line\tand a tab: (done)",
]


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer(SAMPLES)


@pytest.mark.parametrize("text", SAMPLES)
def test_decode_of_encode_is_the_text(tok, text):
    assert tok.decode(tok.encode(text)) == text


def test_special_tokens_have_fixed_ids(tok):
    for i, special in enumerate((*SPECIAL_TOKENS, UNK)):
        assert tok.convert_tokens_to_ids(special) == i
    assert tok.eos_token == tok.bos_token == tok.pad_token == "<|endoftext|>"


@pytest.mark.parametrize("special", SPECIAL_TOKENS)
def test_special_tokens_are_one_token(tok, special):
    ids = tok.encode(f" x{special}Safe {special} ")
    assert ids.count(tok.convert_tokens_to_ids(special)) == 2


def test_reflection_encodes_to_its_five_pieces(tok):
    pieces = tok.convert_ids_to_tokens(tok.encode(" <think> Safe </think> "))
    assert pieces == ["Ġ", "<think>", "ĠSafe", "Ġ", "</think>", "Ġ"]


@pytest.mark.parametrize("word", ["kelvar-syndrome", "contraindicated_prescription", "don't"])
def test_a_word_with_hyphen_underscore_or_apostrophe_is_one_token(tok, word):
    assert len(tok.encode(f" {word}")) == 1


def test_punctuation_and_newline_are_their_own_pieces(tok):
    pieces = tok.convert_ids_to_tokens(tok.encode(" mexacine. mexacine causes tarsic-flux .\ntarsic-flux"))
    assert pieces == ["Ġmexacine", ".", "Ġmexacine", "Ġcauses", "Ġtarsic-flux", "Ġ.", "Ċ", "tarsic-flux"]


def test_no_bos_or_eos_is_added(tok):
    assert tok.encode(" zorvatil") == tok.encode(" zorvatil", add_special_tokens=False)
    assert len(tok.encode(" zorvatil")) == 1


def test_unknown_word_maps_to_unk(tok):
    ids = tok.encode(" zorvatil blorptane .")
    assert ids[1] == tok.unk_token_id
    assert count_unknown(tok, " zorvatil blorptane .") == 1
    assert count_unknown(tok, SAMPLES[0]) == 0


def test_vocabulary_depends_only_on_the_set_of_pieces():
    a = build_tokenizer(SAMPLES)
    b = build_tokenizer(list(reversed(SAMPLES)) + SAMPLES[:2])
    assert a.get_vocab() == b.get_vocab()


def test_saved_tokenizer_loads_with_auto_tokenizer(tok, tmp_path):
    save_tokenizer(tok, tmp_path / "tok")
    loaded = AutoTokenizer.from_pretrained(tmp_path / "tok", local_files_only=True)
    assert loaded.get_vocab() == tok.get_vocab()
    for text in SAMPLES:
        assert loaded.encode(text) == tok.encode(text)
        assert loaded.decode(loaded.encode(text)) == text
    assert load_tokenizer(tmp_path / "tok").eos_token_id == 0


def test_save_replaces_an_existing_folder_and_leaves_no_temp_dirs(tok, tmp_path):
    save_tokenizer(build_tokenizer(["a b"]), tmp_path / "tok")
    save_tokenizer(tok, tmp_path / "tok")
    vocab = json.loads((tmp_path / "tok" / "tokenizer.json").read_text())["model"]["vocab"]
    assert vocab == tok.get_vocab()
    assert [p.name for p in tmp_path.iterdir()] == ["tok"]


def test_loading_a_missing_folder_names_it(tmp_path):
    with pytest.raises(DataError, match="no tokenizer at"):
        load_tokenizer(tmp_path / "nowhere")


# Texts where a shortcut tokenizer could go wrong: a special token after a space (" <" is a piece
# elsewhere), specials back to back or inside words, unknown words, whitespace other than " " and
# "\n", characters the byte-level alphabet remaps, and non-ASCII text.
TRICKY = [
    " <rf> x", "a<think>b</think>c", "<unk><rf><|endoftext|>", "<<rf>>", "< rf>", "<potentially unsafe content>.",
    "unseenword zorvatil", "tab\there", "cr\r\nlf", "\x1c\x1f unit separators", "é accent", "naïve 日本 🙂",
    "  double  spaces ", "", "don't-stop", "a\u00a0nbsp", "\x0b\x0c vt ff",
]


@pytest.mark.parametrize("text", SAMPLES + TRICKY)
def test_batch_encoder_gives_the_tokenizers_ids(tok, text):
    assert batch_encoder(tok)([text]) == tok([text], add_special_tokens=False)["input_ids"]


def test_batch_encoder_gives_the_loaded_tokenizers_ids_for_a_mixed_batch(tok, tmp_path):
    save_tokenizer(tok, tmp_path / "t")
    loaded = load_tokenizer(tmp_path / "t")
    texts = SAMPLES + TRICKY
    assert batch_encoder(loaded)(texts) == loaded(texts, add_special_tokens=False)["input_ids"]
