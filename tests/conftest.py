"""Shared fixtures: tiny random models of each supported family (CPU, seconds)."""

from __future__ import annotations

import pytest
import torch


def tiny_olmo2(layers: int = 3, d: int = 16, ff: int = 24, vocab: int = 61, seed: int = 0):
    from transformers import Olmo2Config, Olmo2ForCausalLM

    torch.manual_seed(seed)
    cfg = Olmo2Config(vocab_size=vocab, hidden_size=d, intermediate_size=ff,
                      num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=2,
                      max_position_embeddings=64, pad_token_id=None, bos_token_id=None,
                      eos_token_id=0)
    return Olmo2ForCausalLM(cfg).eval()


def tiny_gpt2(layers: int = 3, d: int = 16, vocab: int = 61, seed: int = 0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=vocab, n_embd=d, n_layer=layers, n_head=2, n_positions=64,
                     n_inner=24, bos_token_id=0, eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2LMHeadModel(cfg).eval()


def tiny_neox(layers: int = 3, d: int = 16, vocab: int = 61, seed: int = 0):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(seed)
    cfg = GPTNeoXConfig(vocab_size=vocab, hidden_size=d, intermediate_size=24,
                        num_hidden_layers=layers, num_attention_heads=2,
                        max_position_embeddings=64, bos_token_id=0, eos_token_id=0, hidden_dropout=0.0, attention_dropout=0.0)
    return GPTNeoXForCausalLM(cfg).eval()


FAMILIES = {"olmo2": tiny_olmo2, "gpt2": tiny_gpt2, "neox": tiny_neox}


@pytest.fixture(params=sorted(FAMILIES))
def tiny_lm(request):
    return request.param, FAMILIES[request.param]()


@pytest.fixture
def token_batches():
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 61, (6, 12), generator=g)


def smoke_lm(root, steps: int = 4):
    """The smoke world, its tokenizer and its LM trained `steps` steps, by the CLI, under root:
    (world dir, tokenizer dir, model dir)."""
    from curvmem.cli import main

    w, tok, m = root / "world", root / "tok", root / "model"
    assert main(["world", "--out", str(w), "--preset", "smoke"]) == 0
    assert main(["tokenizer", "--corpus", str(w / "train.jsonl"), "--out", str(tok),
                 "--vocab-size", "400"]) == 0
    assert main(["train-lm", "--world", str(w), "--tokenizer", str(tok), "--out", str(m),
                 "--preset", "smoke", "--steps", str(steps)]) == 0
    return w, tok, m
