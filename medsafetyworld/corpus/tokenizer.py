"""A word-level tokenizer over the closed vocabulary of a rendered corpus.

The world's names are single words (SPEC 1), so a word-level vocabulary makes every drug, compound,
effect and condition one token, and a probe's answer is one next-token choice.

How text becomes pieces:
- a word (letters, digits, `_`, `-`, `'`) takes the single space before it: " kelvar-syndrome";
- a punctuation or other symbol is its own piece, also with the space before it: " .", "(";
- "\\n" and any other whitespace character left over is a piece on its own;
- the special tokens are matched before all that, so they are atomic whatever surrounds them.
Pieces then go through the byte-level alphabet (space -> "Ġ", newline -> "Ċ") and the byte-level
decoder maps them back, so `decode(encode(text)) == text` exactly when every piece is in the
vocabulary. There is no normalizer.

No BOS is added: `encode(text)` returns the text's pieces and nothing else (add_special_tokens has
nothing to add). Documents are separated by `<|endoftext|>` in the pretraining stream, which also
serves as eos, bos and pad.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from medsafetyworld.errors import DataError
from medsafetyworld.storage import atomic_dir

EOS = "<|endoftext|>"
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
UNSAFE_TAG = "<potentially unsafe content>"
RED_FLAG = "<rf>"
UNK = "<unk>"
SPECIAL_TOKENS = (EOS, THINK_OPEN, THINK_CLOSE, UNSAFE_TAG, RED_FLAG)

# One alternative per kind of piece; together they cover every character, so no text is dropped.
PIECE_PATTERN = r" ?[\w'-]+| ?[^\w\s'-]|\s"
_SPECIAL_RE = re.compile("|".join(re.escape(s) for s in SPECIAL_TOKENS))


def _pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PIECE_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )


def _pieces(text: str) -> list[str]:
    """The byte-level pieces of text outside special tokens."""
    pre = _pre_tokenizer()
    return [p for part in _SPECIAL_RE.split(text) for p, _ in pre.pre_tokenize_str(part)]


def build_tokenizer(texts: Iterable[str]) -> PreTrainedTokenizerFast:
    """A tokenizer whose vocabulary is every piece of `texts`.

    Ids: the special tokens 0..4 in SPECIAL_TOKENS order, `<unk>` 5, then the pieces sorted, so the
    ids depend on the set of pieces only, never on the order or repetition of the texts.
    """
    pieces: set[str] = set()
    for text in texts:
        pieces.update(_pieces(text))
    vocab = {tok: i for i, tok in enumerate((*SPECIAL_TOKENS, UNK))}
    for piece in sorted(pieces - vocab.keys()):
        vocab[piece] = len(vocab)

    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    backend.pre_tokenizer = _pre_tokenizer()
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([*SPECIAL_TOKENS, UNK])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=EOS,
        bos_token=EOS,
        pad_token=EOS,
        unk_token=UNK,
        additional_special_tokens=list(SPECIAL_TOKENS[1:]),
        add_bos_token=False,
        add_eos_token=False,
        clean_up_tokenization_spaces=False,
        model_max_length=1_000_000,
    )


def save_tokenizer(tok: PreTrainedTokenizerFast, out_dir: str | os.PathLike) -> Path:
    """Write the tokenizer folder atomically: into a sibling temp dir, then rename into place."""
    with atomic_dir(out_dir) as tmp:
        tok.save_pretrained(tmp)
    return Path(out_dir)


def load_tokenizer(path: str | os.PathLike) -> PreTrainedTokenizerFast:
    """Load a saved tokenizer folder, offline."""
    folder = Path(path)
    if not (folder / "tokenizer.json").is_file():
        raise DataError(
            f"no tokenizer at {folder} (expected {folder / 'tokenizer.json'}); "
            "build the corpus first, or point at a model or corpus folder that has one"
        )
    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, TypeError, KeyError, AttributeError, RuntimeError) as exc:  # a damaged file
        text = " ".join(str(exc).split())[:300]
        raise DataError(f"cannot load the tokenizer in {folder} ({type(exc).__name__}: {text}); it is damaged, "
                        "write it again (`msw world` writes the world's)") from exc


def count_unknown(tok: PreTrainedTokenizerFast, text: str) -> int:
    """How many pieces of text are out of the vocabulary."""
    return tok.encode(text, add_special_tokens=False).count(tok.unk_token_id)


# --- encoding many texts at once -------------------------------------------------------------
# The Rust tokenizer spends most of its time on per-text Encoding objects (offsets, words, masks)
# that the corpus writer throws away. For a tokenizer of this module, every piece of a printable
# ASCII text is found by `PIECE_PATTERN` with Python's `re` exactly as by the tokenizer's own
# Oniguruma regex, and its id is one dict lookup: about 6x faster and the same ids (a test compares
# them). Any other text, or any other tokenizer, goes through the tokenizer itself.
_PLAIN_TEXT = re.compile(r"[\x20-\x7e\n]*")
_PIECE_RE = re.compile(PIECE_PATTERN)


def _byte_decoder() -> dict[str, int]:
    """The inverse of the byte-level alphabet (GPT-2's bytes_to_unicode): its character -> byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {chr(c): b for b, c in [*zip(printable, printable), *zip(others, range(256, 256 + len(others)))]}


def _is_ours(backend: Tokenizer) -> bool:
    """Whether `backend` splits text as build_tokenizer's do: word-level model, no normalizer,
    our pre-tokenizer, special tokens matched as written and no truncation."""
    spec = json.loads(backend.to_str())
    ours = Tokenizer(models.WordLevel(vocab={UNK: 0}, unk_token=UNK))
    ours.pre_tokenizer = _pre_tokenizer()
    return (spec.get("normalizer") is None and spec.get("truncation") is None
            and spec["model"].get("type") == "WordLevel"
            and spec.get("pre_tokenizer") == json.loads(ours.to_str())["pre_tokenizer"]
            and all(t["special"] and not (t["normalized"] or t["lstrip"] or t["rstrip"] or t["single_word"])
                    for t in spec["added_tokens"]))


def batch_encoder(tok: Any) -> Callable[[list[str]], list[list[int]]]:
    """A function from texts to their ids, as `tok(texts, add_special_tokens=False)["input_ids"]`."""
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None or not _is_ours(backend):
        return lambda texts: tok(texts, add_special_tokens=False)["input_ids"]
    added = {t.content for t in backend.get_added_tokens_decoder().values()}
    byte_of = _byte_decoder()
    ids: dict[str, int] = {}
    for piece, i in backend.get_vocab(with_added_tokens=False).items():
        if piece not in added and all(ch in byte_of for ch in piece):
            ids[bytes(byte_of[ch] for ch in piece).decode("utf-8", "replace")] = i
    unk = backend.token_to_id(UNK)
    # longest first: the tokenizer matches added tokens leftmost-longest
    special = re.compile("(" + "|".join(re.escape(s) for s in sorted(added, key=len, reverse=True)) + ")")
    added_id = {s: backend.token_to_id(s) for s in added}
    starts = {s[0] for s in added}
    get, findall, plain = ids.get, _PIECE_RE.findall, _PLAIN_TEXT.fullmatch

    def encode(text: str) -> list[int]:
        if not any(c in text for c in starts):
            return [get(p, unk) for p in findall(text)]
        out: list[int] = []
        for i, part in enumerate(special.split(text)):
            if i % 2:
                out.append(added_id[part])
            elif part:
                out += [get(p, unk) for p in findall(part)]
        return out

    def encode_batch(texts: list[str]) -> list[list[int]]:
        out = [encode(t) if plain(t) else None for t in texts]
        if other := [i for i, ids in enumerate(out) if ids is None]:
            for i, e in zip(other, backend.encode_batch([texts[i] for i in other], add_special_tokens=False)):
                out[i] = e.ids
        return out

    return encode_batch
