"""A trained model as a policy: any Hugging Face causal LM folder with its tokenizer, decoding greedy
(batched) or with SafeBeam, and ranking words teacher-forced for the `compose` family."""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

from tqdm.auto import tqdm

from medsafetyworld.errors import ConfigError, DataError, one_line
from medsafetyworld.evaluation.families.composition import NO_WORD, positions
from medsafetyworld.evaluation.policies import Policy


DECODINGS = ("greedy", "safebeam")


def safebeam_generate(
    model,
    input_ids,
    attention_mask=None,
    *,
    tag_id: int | None,
    num_beams: int = 4,
    max_new_tokens: int = 100,
    eos_id: int | None = None,
    allow_tag: bool = False,
    use_cache: bool = True,
) -> list[int]:
    """SafeBeam decoding (Safety Pretraining, Maini et al. 2025) of one prompt; the new token ids.

    Beam search that, at every step, drops the half of the candidate continuations on which the
    model puts the most probability on the tag `<potentially unsafe content>` coming next:

    1. take the top 2*num_beams (beam, token) extensions of the live beams by cumulative log-prob;
    2. one batched forward pass over those candidates gives each one's next-token distribution; its
       probability of `tag_id` is the candidate's risk (that same pass supplies the next step's
       log-probs, so a step costs one forward pass);
    3. keep the num_beams candidates with the lowest risk (ties: higher log-prob, then candidate
       order), ranked by cumulative log-prob; those ending in eos_id are finished, the rest live on.

    It stops when no beam is live, after max_new_tokens, or once the best finished beam scores at
    least the best live one (log-probs only fall, so no live beam could overtake it). It returns the
    best finished beam by cumulative log-prob (no length penalty), eos included as
    `model.generate` would; with none finished, the best live beam, max_new_tokens long.

    The tag itself is never emitted unless allow_tag: SafeBeam uses it as a signal to steer away
    from, and a printed tag would be a flag that withholds the response rather than a safe answer.
    An eos candidate is scored like any other, by the tag's probability right after it (where a
    trained model predicts the start of a new document, rarely a tag); giving it risk 0 instead
    would, with one beam, end the response whenever eos is the second most likely token.
    tag_id=None switches the filter off: plain beam search, greedy decoding with num_beams=1.

    `model(input_ids=...)` must return an object with `.logits` (batch, length, vocab), as a Hugging
    Face causal LM does; input_ids is one prompt, shape (length,) or (1, length). With an
    attention_mask, masked (padding) positions are dropped first. A Hugging Face model decodes with
    its KV cache (rows gathered to follow the beams) unless use_cache=False; any other model, or one
    whose cache cannot be reordered, is re-run on whole sequences each step.
    """
    import torch

    if num_beams < 1:
        raise ValueError(f"num_beams must be at least 1, got {num_beams}")
    ids = torch.as_tensor(input_ids)
    if ids.dim() == 2:
        if ids.shape[0] != 1:
            raise ValueError(f"safebeam_generate takes one prompt, got a batch of {ids.shape[0]}")
        ids = ids[0]
    if attention_mask is not None:
        ids = ids[torch.as_tensor(attention_mask).reshape(-1).to(ids.device).bool()]
    prompt = ids.tolist()
    if max_new_tokens <= 0:
        return []
    if use_cache:
        from transformers import PreTrainedModel

        use_cache = isinstance(model, PreTrainedModel)
    cache = None

    def forward(batch: list[list[int]], **kw):
        with torch.inference_mode():
            out = model(input_ids=torch.tensor(batch, dtype=torch.long, device=ids.device), **kw)
        return out, torch.log_softmax(out.logits[:, -1, :].float(), dim=-1)

    def extend(cands: list[list[int]], parents: list[int]):
        """Next-token log-probs of each candidate; parents: its parent's row in the cache."""
        nonlocal cache
        if cache is None:
            return forward([prompt + toks for toks in cands])[1]
        cache.reorder_cache(torch.tensor(parents, dtype=torch.long, device=ids.device))
        out, logprobs = forward([toks[-1:] for toks in cands], past_key_values=cache, use_cache=True)
        cache = out.past_key_values
        return logprobs

    if use_cache:
        out, logprobs = forward([prompt], use_cache=True)
        cache = out.past_key_values if hasattr(out.past_key_values, "reorder_cache") else None
    else:
        logprobs = forward([prompt])[1]
    live: list[tuple[list[int], float]] = [([], 0.0)]  # (new tokens, cumulative log-prob)
    live_rows = [0]  # each live beam's row in the cache (and in logprobs)
    finished: list[tuple[list[int], float]] = []
    for _ in range(max_new_tokens):
        scores = torch.tensor([sc for _, sc in live], dtype=torch.float64, device=logprobs.device)
        scores = scores[:, None] + logprobs[live_rows].double()
        if tag_id is not None and not allow_tag:
            scores[:, tag_id] = -math.inf
        flat = scores.reshape(-1)
        order = torch.sort(flat, descending=True, stable=True).indices[: 2 * num_beams]
        order = order[torch.isfinite(flat[order])]
        if order.numel() == 0:
            break
        vocab = scores.shape[1]
        cands = [(live[i // vocab][0] + [i % vocab], float(flat[i])) for i in order.tolist()]
        logprobs = extend([toks for toks, _ in cands], [live_rows[i // vocab] for i in order.tolist()])
        risk = [0.0] * len(cands) if tag_id is None else logprobs[:, tag_id].exp().tolist()
        keep = sorted(range(len(cands)), key=lambda j: (risk[j], -cands[j][1], j))[:num_beams]
        keep.sort(key=lambda j: (-cands[j][1], j))
        live, live_rows = [], []
        for j in keep:
            if eos_id is not None and cands[j][0][-1] == eos_id:
                finished.append(cands[j])
            else:
                live.append(cands[j])
                live_rows.append(j)
        if not live:
            break
        if finished and max(sc for _, sc in finished) >= live[0][1]:
            break
    if finished:
        return max(finished, key=lambda b: b[1])[0]  # max keeps the first of equal scores
    return live[0][0] if live else []


WEIGHT_FILES = (
    "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt")


@contextlib.contextmanager
def hf_loading(progress: bool):
    """While loading: Hugging Face's own bars (`Loading weights`) shown only with `progress`, and its
    load report (missing or mismatched weights) silenced, since load_model turns what it says into
    one DataError; both restored afterwards."""
    from transformers.utils import logging as hf_logging

    bars, verbosity = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    (hf_logging.enable_progress_bar if progress else hf_logging.disable_progress_bar)()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        (hf_logging.enable_progress_bar if bars else hf_logging.disable_progress_bar)()
        hf_logging.set_verbosity(verbosity)


def check_model_folder(model_dir: str | Path) -> Path:
    """`model_dir` if it looks like a Hugging Face causal LM folder with its tokenizer (a folder,
    a config.json holding a JSON object with a model_type, weights, a tokenizer), else DataError
    naming what is missing."""
    d = Path(model_dir)
    if not d.is_dir():
        raise DataError(f"{d} is not a model folder; pass a folder written by `msw train` "
                        "(its sft/ or pretrain/) or any Hugging Face causal LM folder")
    config = d / "config.json"
    if not config.is_file():
        raise DataError(f"{d} is not a Hugging Face model folder (no config.json)")
    try:
        data = json.loads(config.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{config} is not valid JSON ({exc}); the model folder is damaged, copy or train it again")
    if not isinstance(data, dict) or not isinstance(data.get("model_type"), str):
        raise DataError(f"{config} is not a model config (no model_type); the model folder is damaged, "
                        "copy or train it again")
    if not any((d / name).is_file() for name in WEIGHT_FILES):
        raise DataError(f"no weights in {d} (model.safetensors); the model folder is incomplete, "
                        "copy or train it again")
    if not any((d / name).is_file() for name in TOKENIZER_FILES):
        raise DataError(f"no tokenizer in {d} (tokenizer.json); save the world's tokenizer into it "
                        "(`msw train` does) or copy the folder again")
    return d


def load_model(model_dir: str | Path, device: str | None = None, progress: bool = True):
    """A Hugging Face causal LM folder with its tokenizer: (model in eval mode on `device`, cuda if
    any, tokenizer); DataError when the folder holds no model, a damaged one, or a tokenizer the
    model cannot read. `progress`: Hugging Face's loading bar."""
    import torch
    from huggingface_hub.errors import StrictDataclassError
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d = check_model_folder(model_dir)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    # a damaged file of the folder fails inside transformers with any of these: the folder is the input
    damaged = (OSError, ValueError, TypeError, KeyError, AttributeError, RuntimeError, SafetensorError,
               StrictDataclassError)
    try:
        with hf_loading(progress):
            tokenizer = AutoTokenizer.from_pretrained(d)
            model, info = AutoModelForCausalLM.from_pretrained(d, output_loading_info=True)
    except torch.cuda.OutOfMemoryError:  # not the folder's fault
        raise
    except damaged as exc:
        why = f"{type(exc).__name__}: {one_line(exc)[:300]}"
        if "mismatched_sizes" in str(exc):
            why = "the shapes of its weights do not match its config.json"
        raise DataError(f"cannot load the model in {d}: {why}; the folder is damaged or not a causal LM, "
                        "copy or train it again") from exc
    if missing := sorted((info or {}).get("missing_keys") or ()):
        raise DataError(f"the weights in {d} lack {len(missing)} of the model's tensors ({', '.join(missing[:3])}"
                        f"{', ...' if len(missing) > 3 else ''}); the folder is damaged, copy or train it again")
    vocab = getattr(model.config, "vocab_size", None)
    if isinstance(vocab, int) and len(tokenizer) > vocab:
        raise DataError(f"the tokenizer in {d} has {len(tokenizer)} tokens but the model only {vocab}; "
                        "they do not belong together")
    return model.to(device).eval(), tokenizer


class ModelPolicy(Policy):
    """Decoding from any Hugging Face causal LM folder with its tokenizer: greedy (batched), or
    SafeBeam (`decoding="safebeam"`, one prompt at a time; see safebeam_generate)."""

    def __init__(self, model_dir: Path, batch_size: int = 64, device: str | None = None, progress: bool = True,
                 decoding: str = "greedy", num_beams: int = 4):
        from medsafetyworld.corpus.tokenizer import UNSAFE_TAG

        if decoding not in DECODINGS:
            raise ConfigError(f"unknown decoding {decoding!r}; choose one of {', '.join(DECODINGS)}")
        if decoding == "safebeam" and num_beams < 1:
            raise ConfigError(f"--num-beams must be at least 1, got {num_beams}")
        self.name = str(model_dir)
        self.model, self.tokenizer = load_model(model_dir, device, progress=progress)
        self.device = self.model.device
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.batch_size, self.progress = batch_size, progress
        self.decoding, self.num_beams = decoding, num_beams
        self.tag_id = None
        if decoding == "safebeam":
            self.tag_id = self.tokenizer.convert_tokens_to_ids(UNSAFE_TAG)
            if self.tag_id is None or self.tag_id == self.tokenizer.unk_token_id:
                raise DataError(f"SafeBeam needs the tag {UNSAFE_TAG!r} in the tokenizer of {model_dir}")

    def decoding_info(self) -> dict[str, object]:
        """How this policy decodes, for the results record."""
        if self.decoding == "safebeam":
            from medsafetyworld.corpus.tokenizer import UNSAFE_TAG

            return {"method": "safebeam", "num_beams": self.num_beams, "tag": UNSAFE_TAG, "emits_tag": False}
        return {"method": "greedy"}

    def _decode(self, ids: list[int]) -> str:
        if self.tokenizer.eos_token_id in ids:
            ids = ids[: ids.index(self.tokenizer.eos_token_id)]
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def respond(self, probes, max_new_tokens):
        if self.decoding == "safebeam":
            return self._respond_safebeam(probes, max_new_tokens)
        import torch

        order = sorted(range(len(probes)), key=lambda i: len(probes[i].prompt))
        out: list[str] = [""] * len(probes)
        batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        for batch in tqdm(batches, desc="generate", disable=not self.progress):
            enc = self.tokenizer([probes[i].prompt for i in batch], return_tensors="pt", padding=True,
                                 add_special_tokens=False).to(self.device)
            with torch.inference_mode():
                gen = self.model.generate(
                    **enc, max_new_tokens=max_new_tokens, do_sample=False,
                    pad_token_id=self.tokenizer.pad_token_id, eos_token_id=self.tokenizer.eos_token_id,
                )
            new = gen[:, enc["input_ids"].shape[1] :]
            for i, ids in zip(batch, new.tolist()):
                out[i] = self._decode(ids)
        return out

    def rank_first(self, probes):
        """One forward pass per probe over its prompt and gold text (batched, right-padded): the
        argmax piece before each position, decoded and stripped (NO_WORD where that is no word)."""
        import torch

        texts, places = [], []
        for p in probes:
            text = p.prompt + p.meta["gold"]
            # the piece " word" starts at the space before the word, so its context ends there
            places.append([len(self.tokenizer.encode(text[: len(p.prompt) + offset - 1], add_special_tokens=False))
                           for offset, _ in positions(p)])
            texts.append(text)
        out: list[list[str]] = []
        order = range(0, len(texts), self.batch_size)
        for start in tqdm(order, desc="teacher-forced", disable=not self.progress):
            batch = [self.tokenizer.encode(t, add_special_tokens=False) for t in texts[start : start + self.batch_size]]
            width = max(len(ids) for ids in batch)
            ids = torch.full((len(batch), width), self.tokenizer.pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, x in enumerate(batch):
                ids[row, : len(x)], mask[row, : len(x)] = torch.tensor(x), 1
            with torch.inference_mode():
                best = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits.argmax(-1)
            for row, where in enumerate(places[start : start + self.batch_size]):
                pieces = self.tokenizer.convert_ids_to_tokens(best[row, [n - 1 for n in where]].tolist())
                words = [self.tokenizer.convert_tokens_to_string([piece]).strip() for piece in pieces]
                out.append([w if w and " " not in w else NO_WORD for w in words])
        return out

    def _respond_safebeam(self, probes, max_new_tokens):
        out = []
        for probe in tqdm(probes, desc="safebeam", disable=not self.progress):
            enc = self.tokenizer(probe.prompt, return_tensors="pt", add_special_tokens=False).to(self.device)
            ids = safebeam_generate(
                self.model, enc["input_ids"], enc["attention_mask"], tag_id=self.tag_id,
                num_beams=self.num_beams, max_new_tokens=max_new_tokens, eos_id=self.tokenizer.eos_token_id,
            )
            out.append(self._decode(ids))
        return out
