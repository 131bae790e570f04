"""From memorization to curvature, in one file: read it top to bottom, run it in about 20 s.

    python examples/walkthrough.py

A tiny OLMo-2 learns two kinds of text: sequences that follow a rule (the alphabet read with a
step of 1, 2 or 3: "adgjmp...") and six random strings ("canaries"), each repeated until it is
recited by heart. Merullo et al. (2025) find that the loss curvature separates the two: what many
examples share (the rule) lies in directions of high curvature, what one example alone needs (a
canary) in directions of low curvature. So we

  1. collect K-FAC factors of the MLPs, A = E[a aᵀ] (inputs) and G = E[g gᵀ] (output gradients),
  2. eigendecompose them, A = U_A diag(μ) U_Aᵀ and G = U_G diag(λ) U_Gᵀ,
  3. rank every pair of eigenvectors (i, j) by its curvature λᵢμⱼ and keep the top pairs that
     hold a fraction ρ of the mass,
  4. edit each weight to those pairs, W' = U_G (C ⊙ M) U_Aᵀ with C = U_Gᵀ W U_A,
  5. and ask the model to recite, before and after.

Every step is a call of curvmem's Python API (docs/api.md), the code `curvmem collect`, `eigen`,
`edit` and `evaluate memorization` run.
"""

import math
import random
import string
import time

import torch
from transformers import Olmo2Config, Olmo2ForCausalLM

import curvmem
from curvmem.edit import select_pairs

start = time.perf_counter()
torch.set_num_threads(1)  # a tiny model: more threads only contend
torch.manual_seed(0)
rng = random.Random(0)

# ----------------------------------------------------------------------------- the data
LETTERS = string.ascii_lowercase
LENGTH, PREFIX = 24, 8  # characters per sequence; a recitation is prompted with the first 8


def rule(first: int, step: int) -> str:
    """The alphabet from `first`, every `step`-th letter, wrapping around."""
    return "".join(LETTERS[(first + step * i) % 26] for i in range(LENGTH))


def random_rule() -> str:
    return rule(rng.randrange(26), rng.choice([1, 2, 3]))


rules = [random_rule() for _ in range(300)]
canaries = ["".join(rng.choice(LETTERS) for _ in range(LENGTH)) for _ in range(6)]
unseen_rules = [random_rule() for _ in range(30)]  # the rule, on sequences never trained on


class CharTokenizer:
    """One token per letter: the part of a Hugging Face tokenizer that curvmem's evaluations use."""

    eos_token_id = None

    def __len__(self):
        return len(LETTERS)

    def encode(self, text: str) -> list[int]:
        return [LETTERS.index(c) for c in text]

    def __call__(self, text, add_special_tokens=False):  # one text or a list of them
        ids = self.encode(text) if isinstance(text, str) else [self.encode(t) for t in text]
        return {"input_ids": ids}


tokenizer = CharTokenizer()
train = torch.tensor(tokenizer(rules + canaries * 12)["input_ids"])
print(f"training data: {len(rules)} rule sequences, {len(canaries)} canaries x 12, "
      f"{train.numel()} tokens")

# ----------------------------------------------------------------------------- the model
config = Olmo2Config(vocab_size=len(LETTERS), hidden_size=64, intermediate_size=256,
                     num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                     max_position_embeddings=64, pad_token_id=None, bos_token_id=None,
                     eos_token_id=None)
model = Olmo2ForCausalLM(config)
steps = 300
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
schedule = torch.optim.lr_scheduler.LambdaLR(
    optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))  # cosine to zero
order = torch.Generator().manual_seed(0)
for _ in range(steps):
    batch = train[torch.randint(len(train), (32,), generator=order)]
    loss = model(input_ids=batch, labels=batch).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    schedule.step()
model.eval()
print(f"trained {steps} steps in {time.perf_counter() - start:.0f} s, final loss {loss.item():.3f}")


def items(texts, kind):
    return [{"prefix": t[:PREFIX], "suffix": t[PREFIX:], "kind": kind} for t in texts]


probes = items(canaries, "canaries (memorized)") + items(unseen_rules, "unseen rule sequences")


def recite(label: str) -> dict:
    """Greedy continuation of each probe's prefix; strict: the whole suffix right."""
    result = curvmem.recitation(model, tokenizer, probes)
    row = {kind: score["strict"] for kind, score in result["by_kind"].items()}
    print(f"  {label:<34}" + "".join(f"{kind}: {v:4.0%}   " for kind, v in row.items()))
    return row


print("\nrecitation (the fraction of suffixes recited exactly):")
before = recite("before any edit")

# ----------------------------------------------------------------------------- 1. factors
# The Fisher of the training distribution: targets sampled from the model's own predictions
# (fisher="sampled", the paper's), every MLP module of both blocks.
factors = curvmem.collect(model, train, fisher="sampled", batch_size=32)
key = (0, "mlp.down_proj")
print(f"\nK-FAC factors of {len(factors.G)} modules over {factors.attrs['n_tokens']} positions; "
      f"layer 0 down_proj: A {tuple(factors.A[key].shape)}, G {tuple(factors.G[key].shape)}")

# ----------------------------------------------------------------------------- 2. eigh
bases = curvmem.eigenbases(factors)
mu, lam = bases[key]["A_eigenvalues"], bases[key]["G_eigenvalues"]  # descending
for name, values in (("A (μ)", mu), ("G (λ)", lam)):
    print(f"eigenvalues of {name}: largest " + ", ".join(f"{v:.3g}" for v in values[:4])
          + f"; smallest {values[-1]:.1e}")

# ----------------------------------------------------------------------------- 3. pairs
# Pair (i, j) carries curvature λᵢμⱼ; the mass is (Σλ)(Σμ). A few pairs hold most of it.
rho = 0.9
mask = select_pairs(lam, mu, rho)
print(f"\npairs of layer 0 down_proj: {mask.size}; the top {mask.sum()} ({mask.mean():.1%}) "
      f"hold {rho:.0%} of the curvature mass")
for share in (0.5, 0.99):
    print(f"  {share:.0%} of the mass: {select_pairs(lam, mu, share).mean():.1%} of the pairs")

# ----------------------------------------------------------------------------- 4. the edit
# Keep those pairs in every module of layer 0 (the rest of the weight, in this basis, is set to
# zero). The edit is computed, not applied: `with edit:` applies it and restores the weights.
edit = curvmem.make_edit(model, bases, rho=rho, layers=[0])
stats = edit.meta["modules"]["model.layers.0.mlp.down_proj.weight"]
print(f"edit of {len(edit.tensors)} weights; down_proj keeps {stats['pairs_kept']} of "
      f"{stats['pairs_total']} pairs, |W'| / |W| = {stats['weight_norm_ratio']:.2f}")

# ----------------------------------------------------------------------------- 5. recitation
print("\nrecitation (the fraction of suffixes recited exactly):")
print(f"  {'before any edit':<34}" + "".join(f"{k}: {v:4.0%}   " for k, v in before.items()))
with edit:
    after = recite(f"after the edit (rho {rho}, layer 0)")
# A control: as many pairs, chosen at random rather than by curvature.
with curvmem.make_edit(model, bases, rho=rho, layers=[0], keep="random"):
    control = recite("control: as many random pairs")
for other in (0.95, 0.8):  # less and more of the mass removed
    with curvmem.make_edit(model, bases, rho=other, layers=[0]):
        recite(f"the edit at rho {other}")
print("  back to the trained model:        "
      f"canaries {curvmem.recitation(model, tokenizer, probes[:6])['strict']:.0%}")

# The edit as the file `curvmem edit` writes (and `curvmem evaluate --edit` reads):
#     edit.save("edit.safetensors")
print(f"\ndone in {time.perf_counter() - start:.0f} s")
