"""Shared fixtures: small worlds built in-process; nothing is downloaded."""

from __future__ import annotations

import json
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from medsafetyworld.config import get_preset
from medsafetyworld.corpus import templates as T
from medsafetyworld.world.generate import generate_world
from medsafetyworld.world.splits import make_splits


@pytest.fixture(scope="session")
def micro():
    return get_preset("micro")


@pytest.fixture(scope="session")
def micro_world(micro):
    world = generate_world(micro.world, 0)
    return world, make_splits(world, micro.world, 0, len(T.REQUESTS))


@pytest.fixture(scope="session")
def tiny_world():
    preset = get_preset("tiny")
    world = generate_world(preset.world, 0)
    return world, make_splits(world, preset.world, 0, len(T.REQUESTS))


@pytest.fixture(scope="session")
def micro_world_dir(micro, tmp_path_factory):
    from medsafetyworld.pipeline import make_world

    out = tmp_path_factory.mktemp("world")
    make_world(micro, 0, out)
    return out


# --- tiny models for evaluation and attack tests --------------------------------------------

RANDOM_MODEL = dict(n_layers=1, d_model=32, n_heads=2, n_kv_heads=2, d_mlp=64, context=256)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models run far faster on one thread, above all beside another job; restored after."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def micro_loaded(micro_world_dir):
    """(world, splits) as read back from the micro world folder."""
    from medsafetyworld.world.io import load_world

    return load_world(micro_world_dir)


@pytest.fixture(scope="session")
def micro_tokenizer(micro_world_dir):
    from medsafetyworld.corpus.tokenizer import load_tokenizer

    return load_tokenizer(micro_world_dir / "tokenizer")


@pytest.fixture(scope="session")
def random_model(micro_tokenizer):
    """A function: a randomly initialised 1-layer Llama over the micro world's tokenizer."""
    from medsafetyworld.config import ModelConfig
    from medsafetyworld.training.model import build_model

    tok = micro_tokenizer

    def make(seed: int = 0):
        return build_model(ModelConfig(**RANDOM_MODEL), len(tok), seed=seed, eos_id=tok.eos_token_id,
                           pad_id=tok.pad_token_id, bos_id=tok.bos_token_id)

    return make


@pytest.fixture(scope="session")
def random_model_dir(random_model, micro_tokenizer, tmp_path_factory):
    """That model saved as a Hugging Face folder with its tokenizer (tests must not write into it)."""
    out = tmp_path_factory.mktemp("random-model")
    random_model().save_pretrained(out)
    micro_tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def fast_micro(micro):
    """micro with few probes and short answers, so a random model answers quickly."""
    import dataclasses

    return dataclasses.replace(micro, eval=dataclasses.replace(
        micro.eval, max_new_tokens=8, probes_per_pair=1, harmful_per_condition=1, max_probes_per_family=6,
        knowledge_facts=4, bootstrap_samples=20))


@pytest.fixture(scope="session")
def attack_context():
    """A function: the AttackContext an attack test runs in ((world, splits), preset, policy, folder,
    model folder or None), seed 0, no progress bars."""
    from medsafetyworld.attacks import AttackContext

    def make(loaded, preset, policy, folder, model_dir=None):
        world, splits = loaded
        return AttackContext(world, splits, preset, policy, 0, folder, model_dir=model_dir, seed=0, progress=False)

    return make


# --- a fake OpenAI-compatible chat endpoint for the real-web track's judge and rewriter --------------

class _ChatHandler(BaseHTTPRequestHandler):
    def do_POST(self):
        payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), **payload})
        reply = self.server.reply(payload)
        body = reply if isinstance(reply, bytes) else json.dumps({
            "id": "x", "object": "chat.completion", "model": payload["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}],
        }).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class _ChatServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # a client that timed out (or was killed) has hung up on its reply


@contextmanager
def _serve_chat(reply):
    server = _ChatServer(("127.0.0.1", 0), _ChatHandler)
    server.reply, server.requests = reply, []
    server.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="session")
def serve_chat():
    """`with serve_chat(reply) as server:` a chat-completions endpoint on 127.0.0.1 at `server.url`.
    `reply(payload)` gives the assistant's content (str), wrapped in a chat completion, or a raw body
    (bytes); it runs in the request's thread, so it may wait. `server.requests` lists every request
    (its payload with `path` and `auth`)."""
    return _serve_chat
