"""The embedded synthetic world: a small language, facts, skills and canaries; its tokenizer; a tiny
OLMo-2 trained on it from scratch on CPU.

The world stands in for the paper's pretraining corpus, at a size that trains in minutes:

    filler       paragraphs from a small stochastic grammar (held-out samples give perplexity)
    closed_book  invented entities with attributes ("The capital of Velorn is Quist."), each fact
                 seen `fact_repeats` times in training, queried later without context
    open_book    a passage of fresh facts, then a question about one of them
    arithmetic   two-digit addition and subtraction ("Compute: 23 + 45 = 68.")
    logic        in-context deductions over fresh names (order relations) and boolean expressions
    canaries     memorized sequences, repeated `canary_repeats` times in training, of two kinds:
                 random (uniformly random words) and natural (samples of the grammar itself)

`generate_world(config)` returns every split as lists of rows; `write_world(out, ...)` writes them
(layout in docs/lm.md). Everything is a pure function of the config and its seed: each component
draws from its own `random.Random(f"{seed}:{component}")`, so changing one size leaves the others'
samples alone.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
import uuid
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import torch

from curvmem.muon import Muon
from curvmem.presets import TrainConfig, WorldConfig
from curvmem.store import read_jsonl

# --------------------------------------------------------------------------- the language

DETERMINERS = ["the", "a", "every", "some", "that", "this", "one", "no"]
NOUNS = ["farmer", "river", "lantern", "garden", "merchant", "window", "harbor", "soldier", "mountain", "letter", "kettle", "forest", "child", "teacher", "bridge", "wagon", "village", "candle", "mirror", "sailor", "meadow", "tower", "painter", "storm", "orchard", "market", "island", "cellar", "fisher", "weaver", "temple", "road", "hammer", "shepherd", "valley", "clock", "rider", "blanket", "queen", "king", "ladder", "baker", "wall", "drum", "map", "coat", "stone", "bird", "wolf", "horse", "goat", "cat", "lamp", "boat", "field", "cloud", "book", "door", "song", "rope", "shadow", "well", "pond", "basket"]
ADJECTIVES = ["old", "quiet", "bright", "small", "heavy", "green", "tall", "crooked", "silver", "wooden", "gentle", "hungry", "narrow", "distant", "warm", "cold", "broken", "patient", "golden", "muddy", "proud", "tired", "clever", "lonely", "hidden", "ancient", "brave", "dusty", "careful", "noisy"]
TRANSITIVE = ["found", "carried", "watched", "followed", "painted", "mended", "sold", "built", "opened", "crossed", "visited", "remembered", "praised", "moved", "cleaned", "guarded", "forgot", "counted", "lifted", "traded"]
INTRANSITIVE = ["slept", "waited", "laughed", "wandered", "sang", "rested", "vanished", "shivered", "listened", "returned", "spoke", "worked"]
ADVERBS = ["slowly", "quietly", "often", "never", "suddenly", "carefully", "again", "softly", "early", "late"]
PREPOSITIONS = ["near", "behind", "under", "beside", "across", "above", "inside", "past"]
CONNECTIVES = ["and", "but", "while", "because", "so"]
OPENERS = ["in the morning", "after the rain", "long ago", "at dusk", "that winter",
           "before the market", "by the river", "once more"]
LEXICON = sorted(set(DETERMINERS + NOUNS + ADJECTIVES + TRANSITIVE + INTRANSITIVE + ADVERBS
                     + PREPOSITIONS + CONNECTIVES))


def _noun_phrase(rng: random.Random) -> str:
    words = [rng.choice(DETERMINERS)]
    if rng.random() < 0.5:
        words.append(rng.choice(ADJECTIVES))
    words.append(rng.choice(NOUNS))
    if rng.random() < 0.2:
        words += [rng.choice(PREPOSITIONS), "the", rng.choice(NOUNS)]
    return " ".join(words)


def _clause(rng: random.Random) -> str:
    subject = _noun_phrase(rng)
    if rng.random() < 0.65:
        verb = f"{rng.choice(TRANSITIVE)} {_noun_phrase(rng)}"
    else:
        verb = rng.choice(INTRANSITIVE)
    if rng.random() < 0.3:
        verb += " " + rng.choice(ADVERBS)
    if rng.random() < 0.25:
        verb += f" {rng.choice(PREPOSITIONS)} the {rng.choice(NOUNS)}"
    return f"{subject} {verb}"


def sentence(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.25:
        text = f"{_clause(rng)} {rng.choice(CONNECTIVES)} {_clause(rng)}"
    elif r < 0.4:
        text = f"{rng.choice(OPENERS)}, {_clause(rng)}"
    else:
        text = _clause(rng)
    return text[0].upper() + text[1:] + "."


def paragraph(rng: random.Random, n_sentences: tuple[int, int] = (3, 7)) -> str:
    return " ".join(sentence(rng) for _ in range(rng.randint(*n_sentences)))


def natural_text(rng: random.Random, n_words: int) -> str:
    """Grammar text cut to exactly `n_words` whitespace-separated words."""
    words: list[str] = []
    while len(words) < n_words:
        words += sentence(rng).split()
    return " ".join(words[:n_words])


def random_text(rng: random.Random, n_words: int) -> str:
    """Uniformly random words of the lexicon: no structure to lean on, only memory."""
    return " ".join(rng.choice(LEXICON) for _ in range(n_words))


# --------------------------------------------------------------------------- names and facts

ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "kr",
          "tr", "st", "th", "sh", "gl"]
VOWELS = ["a", "e", "i", "o", "u", "ai", "ou", "ea"]
CODAS = ["", "n", "r", "l", "s", "m", "k", "th", "x", "st"]


def name_pool(rng: random.Random, n: int) -> list[str]:
    """`n` distinct invented two-syllable names that are not English words of the lexicon."""
    seen, out = set(LEXICON), []
    while len(out) < n:
        name = "".join(rng.choice(ONSETS) + rng.choice(VOWELS) + rng.choice(CODAS)
                       for _ in range(2)).capitalize()
        if name.lower() not in seen:
            seen.add(name.lower())
            out.append(name)
    return out


EXPORTS = ["salt", "silk", "copper", "amber", "wool", "tea", "glass", "iron", "honey", "timber",
           "spice", "pearls"]
ANIMALS = ["fox", "owl", "heron", "lynx", "eagle", "otter", "stag", "crane", "boar", "hare",
           "swan", "viper"]
# attribute -> (question phrase, statement templates); "{e}" entity, "{v}" value
ATTRIBUTES = {
    "capital": ("capital", ["The capital of {e} is {v}.", "{e} has its capital at {v}.",
                            "In {e}, the capital city is {v}."]),
    "ruler": ("ruler", ["The ruler of {e} is {v}.", "{e} is ruled by {v}.",
                        "Everyone in {e} obeys {v}."]),
    "export": ("main export", ["The main export of {e} is {v}.", "{e} mostly sells {v}.",
                               "Traders buy {v} from {e}."]),
    "animal": ("emblem animal", ["The emblem animal of {e} is the {v}.",
                                 "The flag of {e} shows a {v}.", "{e} honors the {v}."]),
}


def question(attr: str, entity: str) -> str:
    return f"Question: the {ATTRIBUTES[attr][0]} of {entity} is"


def entity_facts(rng: random.Random, entity: str, names) -> dict:
    return {"capital": next(names), "ruler": next(names), "export": rng.choice(EXPORTS),
            "animal": rng.choice(ANIMALS)}


# --------------------------------------------------------------------------- skills


def arithmetic_problem(a: int, b: int, op: str) -> tuple[str, str]:
    value = a + b if op == "+" else a - b
    return f"Compute: {a} {op} {b} =", str(value)


def arithmetic_pairs(rng: random.Random, n_train: int, n_test: int):
    """Disjoint (a, b, op) problems: two-digit operands, subtraction never negative."""
    space = [(a, b, op) for a in range(10, 100) for b in range(10, 100) for op in "+-"
             if op == "+" or a >= b]
    if n_train + n_test > len(space):
        raise ValueError(f"n_arith_train + n_arith_test must be <= {len(space)}")
    chosen = rng.sample(space, n_train + n_test)
    return chosen[:n_train], chosen[n_train:]


def order_problem(rng: random.Random, names: list[str]) -> tuple[str, str, str]:
    """Three fresh names in a chain; premises shuffled; ask for an extreme. (premises, q, answer)"""
    adjective, most, least = rng.choice([("older", "oldest", "youngest"),
                                         ("taller", "tallest", "shortest"),
                                         ("faster", "fastest", "slowest")])
    a, b, c = names  # a > b > c
    premises = [f"{a} is {adjective} than {b}.", f"{b} is {adjective} than {c}."]
    rng.shuffle(premises)
    if rng.random() < 0.5:
        return " ".join(premises), f"Question: the {most} is", a
    return " ".join(premises), f"Question: the {least} is", c


def boolean_expression(rng: random.Random, depth: int = 2) -> tuple[str, bool]:
    if depth == 0 or rng.random() < 0.3:
        value = rng.random() < 0.5
        return ("true" if value else "false"), value
    if rng.random() < 0.25:
        text, value = boolean_expression(rng, depth - 1)
        return f"not {text}", not value
    left, lv = boolean_expression(rng, depth - 1)
    right, rv = boolean_expression(rng, depth - 1)
    op = rng.choice(["and", "or"])
    return f"( {left} {op} {right} )", (lv and rv) if op == "and" else (lv or rv)


def logic_problem(rng: random.Random, names) -> tuple[str, str, str]:
    """(prompt, answer, subcategory): order relations over fresh names ("order"), or a boolean
    expression ("boolean")."""
    if rng.random() < 0.5:
        premises, q, answer = order_problem(rng, [next(names) for _ in range(3)])
        return f"{premises} {q}", answer, "order"
    text, value = boolean_expression(rng)
    return f"Evaluate: {text} =", "true" if value else "false", "boolean"


# --------------------------------------------------------------------------- the world


def _rng(cfg: WorldConfig, component: str) -> random.Random:
    return random.Random(f"{cfg.seed}:{component}")


def _unique(rng: random.Random, make, n: int, taken: set) -> list:
    """`n` samples of make(rng) not in `taken` (which is updated): splits never share a text."""
    out = []
    for _ in range(1000 * n + 1000):
        if len(out) == n:
            return out
        x = make(rng)
        if x not in taken:
            taken.add(x)
            out.append(x)
    raise ValueError("the world is too small to draw that many distinct samples; lower the sizes")


def generate_world(cfg: WorldConfig) -> dict:
    """Every split of the world as lists of JSON-able rows (see docs/lm.md for the fields)."""
    # one pool of invented names, cut into disjoint roles, so no name crosses a split
    n_names = (cfg.n_entities * 3 + (cfg.n_open_train + cfg.n_open_test) * 6
               + (cfg.n_logic_train + cfg.n_logic_test) * 3 + cfg.n_copy_train * 4)
    names = name_pool(_rng(cfg, "names"), n_names)
    cut = iter(names)
    entity_names = [next(cut) for _ in range(cfg.n_entities * 3)]
    open_train_names = iter([next(cut) for _ in range(cfg.n_open_train * 6)])
    open_test_names = iter([next(cut) for _ in range(cfg.n_open_test * 6)])
    logic_train_names = iter([next(cut) for _ in range(cfg.n_logic_train * 3)])
    logic_test_names = iter([next(cut) for _ in range(cfg.n_logic_test * 3)])
    copy_names = [next(cut) for _ in range(cfg.n_copy_train * 4)]

    train, tasks = [], []

    # filler: training paragraphs, a retain subset of them, and fresh held-out ones
    texts: set = set()
    rng = _rng(cfg, "filler")
    filler = _unique(rng, paragraph, cfg.n_filler, texts)
    heldout = _unique(_rng(cfg, "heldout"), paragraph, cfg.n_heldout, texts)
    train += [{"text": t, "source": "filler"} for t in filler]
    retain = [{"text": t, "source": "filler"} for t in _rng(cfg, "retain").sample(filler, cfg.n_retain)]

    # closed-book facts: statements in rotating templates, and the question form itself
    rng = _rng(cfg, "facts")
    entities, values = entity_names[: cfg.n_entities], iter(entity_names[cfg.n_entities:])
    for entity in entities:
        for attr, value in entity_facts(rng, entity, values).items():
            forms = [f"{question(attr, entity)} {{v}}."] + ATTRIBUTES[attr][1]
            for k in range(cfg.fact_repeats):
                text = forms[k % len(forms)].format(e=entity, v=value)
                train.append({"text": text, "source": "closed_book"})
            tasks.append({"category": "closed_book", "prompt": question(attr, entity),
                          "answer": value})

    # open-book: a passage about two fresh entities, a question about one fact in it
    def open_book(rng, names):
        facts = []
        for _ in range(2):
            entity = next(names)
            values = iter([next(names), next(names)])
            for attr, value in entity_facts(rng, entity, values).items():
                facts.append((attr, entity, value))
        shown = rng.sample(facts, cfg.open_facts)
        passage = " ".join(ATTRIBUTES[a][1][0].format(e=e, v=v) for a, e, v in shown)
        attr, entity, value = rng.choice(shown)
        return f"Passage: {passage} {question(attr, entity)}", value

    rng = _rng(cfg, "open_book")
    for _ in range(cfg.n_open_train):
        prompt, answer = open_book(rng, open_train_names)
        train.append({"text": f"{prompt} {answer}.", "source": "open_book"})
    rng = _rng(cfg, "open_book_test")
    for _ in range(cfg.n_open_test):
        prompt, answer = open_book(rng, open_test_names)
        tasks.append({"category": "open_book", "prompt": prompt, "answer": answer})

    # copying practice: fresh names said twice (training only; no test category)
    for i in range(cfg.n_copy_train):
        listed = " ".join(copy_names[4 * i:4 * i + 4])
        train.append({"text": f"Repeat: {listed}. Again: {listed}.", "source": "copy"})

    # arithmetic: disjoint problem sets
    train_pairs, test_pairs = arithmetic_pairs(_rng(cfg, "arithmetic"), cfg.n_arith_train,
                                               cfg.n_arith_test)
    for a, b, op in train_pairs:
        prompt, answer = arithmetic_problem(a, b, op)
        train.append({"text": f"{prompt} {answer}.", "source": "arithmetic"})
    for a, b, op in test_pairs:
        prompt, answer = arithmetic_problem(a, b, op)
        tasks.append({"category": "arithmetic", "prompt": prompt, "answer": answer})

    # logic: fresh names per problem. The test problems are drawn first and training never
    # repeats one: boolean expressions come from a small space (~300 at depth 2), so drawing the
    # training set first would leave almost only order problems untrained for the test.
    tests = _unique(_rng(cfg, "logic_test"), lambda r: logic_problem(r, logic_test_names),
                    cfg.n_logic_test, set())
    # the subcategory lets a report tell order questions (copying a fresh name from context) from
    # boolean expressions, which a model can answer without copying
    tasks += [{"category": "logic", "subcategory": sub, "prompt": prompt, "answer": answer}
              for prompt, answer, sub in tests]
    test_prompts = {prompt for prompt, _, _ in tests}
    rng, n_train = _rng(cfg, "logic"), 0
    for _ in range(1000 * cfg.n_logic_train):
        if n_train == cfg.n_logic_train:
            break
        prompt, answer, _ = logic_problem(rng, logic_train_names)
        if prompt not in test_prompts:
            train.append({"text": f"{prompt} {answer}.", "source": "logic"})
            n_train += 1

    # canaries: per kind, distinct texts split into forget / untargeted / control
    canaries = {"forget": [], "untargeted": [], "control": []}
    for kind, make in (("random", random_text), ("natural", natural_text)):
        rng = _rng(cfg, f"canary_{kind}")
        drawn = _unique(rng, lambda r, make=make: make(r, cfg.canary_words), 3 * cfg.n_canaries, texts)
        for i, split in enumerate(canaries):
            for j, text in enumerate(drawn[i * cfg.n_canaries:(i + 1) * cfg.n_canaries]):
                canaries[split].append({"id": f"{kind}-{split}-{j}", "kind": kind, "text": text})
    for split in ("forget", "untargeted"):
        for row in canaries[split]:
            train += [{"text": row["text"], "source": "canary", "id": row["id"]}] * cfg.canary_repeats

    _rng(cfg, "shuffle").shuffle(train)
    return {"train": train, "heldout": [{"text": t} for t in heldout], "retain": retain,
            "tasks": tasks, "canaries_forget": canaries["forget"],
            "canaries_untargeted": canaries["untargeted"],
            "canaries_control": canaries["control"]}


# --------------------------------------------------------------------------- writing


@contextmanager
def atomic_dir(out):
    """Yield a temp directory beside `out`; it replaces `out` only if the block succeeds."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.mkdir()
    try:
        yield tmp
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def write_world(out, cfg: WorldConfig) -> dict:
    """Generate the world and write it to directory `out` (replaced atomically). Returns counts."""
    t0 = time.perf_counter()
    world = generate_world(cfg)
    with atomic_dir(out) as tmp:
        for name, rows in world.items():
            _write_jsonl(tmp / f"{name}.jsonl", rows)
        counts = {name: len(rows) for name, rows in world.items()}
        meta = {"config": asdict(cfg), "counts": counts,
                "seconds": round(time.perf_counter() - t0, 3)}
        (tmp / "world.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


# --------------------------------------------------------------------------- tokenizer

EOS = "<|endoftext|>"
PAD = "<|pad|>"


def train_tokenizer(corpus, out, vocab_size: int = 1024) -> dict:
    """Byte-level BPE on the `text` of `corpus` (JSONL); digits split one by one (arithmetic).

    Saved as a transformers fast tokenizer, so AutoTokenizer.from_pretrained(out) loads it.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 300:
        raise ValueError(f"--vocab-size must be >= 300 (256 bytes + specials + merges), "
                         f"got {vocab_size}")
    texts = [r["text"] for r in read_jsonl(corpus, ("text",))]
    t0 = time.perf_counter()
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS, PAD],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=PAD)
    with atomic_dir(out) as tmp:
        fast.save_pretrained(str(tmp))
    return {"vocab_size": fast.vocab_size, "seconds": round(time.perf_counter() - t0, 3)}


# --------------------------------------------------------------------------- the tiny model


def build_model(cfg: TrainConfig, vocab_size: int, eos_id: int, pad_id: int):
    from transformers import Olmo2Config, Olmo2ForCausalLM

    torch.manual_seed(cfg.seed)
    config = Olmo2Config(vocab_size=vocab_size, hidden_size=cfg.d_model,
                         intermediate_size=cfg.d_ff, num_hidden_layers=cfg.n_layers,
                         num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_heads,
                         max_position_embeddings=max(512, cfg.seq_len), pad_token_id=pad_id,
                         bos_token_id=None, eos_token_id=eos_id, tie_word_embeddings=False)
    return Olmo2ForCausalLM(config)


def pack_documents(docs: list[list[int]], seq_len: int, eos_id: int, pad_id: int) -> torch.Tensor:
    """Documents (+ EOS) packed into [n, seq_len] blocks without splitting any that fits.

    A document starts at the beginning of a block whenever it would not fit in the rest of the
    current one, so a canary is always trained with its whole 64-token prefix in context, as it
    is queried. Longer documents continue in the next block. The tail is `pad_id` (no loss).
    """
    blocks, current = [], []
    for doc in docs:
        doc = doc + [eos_id]
        if current and len(current) + len(doc) > seq_len:
            blocks.append(current + [pad_id] * (seq_len - len(current)))
            current = []
        while len(doc) > seq_len:
            blocks.append(doc[:seq_len])
            doc = doc[seq_len:]
        current += doc
    if current:
        blocks.append(current + [pad_id] * (seq_len - len(current)))
    return torch.tensor(blocks, dtype=torch.long)


def _compiled(model):
    """torch.compile(model), after checking for the C++ compiler Inductor's CPU kernels need.

    Compiling fuses the many small element-wise ops of a tiny OLMo-2 (RMSNorms, rotary, SwiGLU),
    about a fifth of a training step on CPU; benchmarks/bench_train.py measures it.
    """
    from torch._inductor import cpp_builder

    try:
        cxx = cpp_builder.get_cpp_compiler()
    except Exception as e:  # noqa: BLE001 - Inductor raises several kinds when none is found
        raise ValueError(f"compile: true needs a C++ compiler for torch.compile ({e}); install "
                         f"g++ or clang++, or train with compile: false (`--no-compile`)") from None
    if shutil.which(cxx) is None and not Path(cxx).is_file():
        raise ValueError(f"compile: true needs the C++ compiler '{cxx}' for torch.compile; install "
                         f"it, or train with compile: false (`--no-compile`)")
    return torch.compile(model)


class MuonWithAdamW:
    """Muon for the transformer blocks' weight matrices, AdamW for everything else.

    Muon orthogonalizes each matrix's momentum (Newton-Schulz), which suits hidden matrices only;
    embeddings, the LM head and the norm weights keep AdamW, as Muon's authors advise. Muon's
    step is scaled to AdamW's update RMS ("match_rms_adamw"), so both share one learning rate and
    train_lm's schedule sets it on every group alike. The Newton-Schulz iterations run in bf16
    where the hardware multiplies bf16 natively and in float32 elsewhere (curvmem.muon).
    """

    def __init__(self, model, cfg: TrainConfig):
        hidden, rest = [], []
        for name, p in model.named_parameters():
            (hidden if p.ndim == 2 and ".layers." in name else rest).append(p)
        self.muon = Muon(hidden, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.optimizers = [
            self.muon,
            torch.optim.AdamW(rest, lr=cfg.lr, betas=(0.9, 0.95), weight_decay=0.0,
                              fused=cfg.fused_adamw or None)]
        self.param_groups = [g for opt in self.optimizers for g in opt.param_groups]

    def step(self) -> None:
        for opt in self.optimizers:
            opt.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)


def make_optimizer(model, cfg: TrainConfig):
    """cfg.optimizer "adamw": AdamW (betas 0.9, 0.95), weight decay on matrices only, fused when
    the config asks. "muon": MuonWithAdamW."""
    if cfg.optimizer == "muon":
        return MuonWithAdamW(model, cfg)
    if cfg.optimizer != "adamw":
        raise ValueError(f"unknown optimizer '{cfg.optimizer}'; choose adamw or muon")
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=cfg.lr, betas=(0.9, 0.95), fused=cfg.fused_adamw or None)


def train_step(forward, model, opt, input_ids, labels) -> torch.Tensor:
    """One optimizer step (gradients clipped to norm 1) through `forward`, the model or its
    compiled wrapper; returns the loss."""
    loss = forward(input_ids=input_ids, labels=labels).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss


@contextmanager
def _deterministic(on: bool):
    """torch.use_deterministic_algorithms(True) inside the block when `on`; the caller's setting
    is restored after."""
    if not on:
        yield
        return
    before = (torch.are_deterministic_algorithms_enabled(),
              torch.is_deterministic_algorithms_warn_only_enabled())
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])


def train_lm(world_dir, tokenizer_dir, out, cfg: TrainConfig, progress: bool = True) -> dict:
    """Train the tiny OLMo-2 on world_dir/train.jsonl; save model + tokenizer to `out`."""
    from tqdm import tqdm

    from curvmem.models import load_tokenizer

    train_path = Path(world_dir) / "train.jsonl"
    rows = read_jsonl(train_path, ("text",))
    if not (Path(tokenizer_dir) / "tokenizer.json").is_file():
        raise ValueError(f"{tokenizer_dir}: no tokenizer.json; run `curvmem tokenizer` first")
    tokenizer = load_tokenizer(tokenizer_dir)
    if tokenizer.eos_token_id is None or tokenizer.pad_token_id is None:
        raise ValueError(f"{tokenizer_dir}: the tokenizer needs eos and pad tokens")
    torch.set_num_threads(cfg.threads)
    t0 = time.perf_counter()
    ids = tokenizer([r["text"] for r in rows], add_special_tokens=False)["input_ids"]
    blocks = pack_documents(ids, cfg.seq_len, tokenizer.eos_token_id, tokenizer.pad_token_id)
    steps_per_epoch = math.ceil(len(blocks) / cfg.batch_size)
    steps = cfg.steps or cfg.epochs * steps_per_epoch

    model = build_model(cfg, len(tokenizer), tokenizer.eos_token_id, tokenizer.pad_token_id)
    model.train()
    opt = make_optimizer(model, cfg)
    forward = _compiled(model) if cfg.compile else model

    def lr_at(step):  # linear warmup, cosine decay to 10 %
        if step < cfg.warmup:
            return cfg.lr * (step + 1) / cfg.warmup
        frac = (step - cfg.warmup) / max(1, steps - cfg.warmup)
        return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))

    gen = torch.Generator().manual_seed(cfg.seed)
    order = torch.empty(0, dtype=torch.long)
    losses = []
    bar = tqdm(range(steps), desc="train-lm", disable=not progress, mininterval=1.0)
    # Inductor's CPU kernels accumulate some gradients with atomic adds, so a compiled step on
    # 2+ threads differs run to run unless deterministic algorithms are asked for (tested).
    with _deterministic(cfg.compile):
        for step in bar:
            if len(order) < cfg.batch_size:  # reshuffle the blocks each epoch
                order = torch.cat([order, torch.randperm(len(blocks), generator=gen)])
            batch, order = blocks[order[: cfg.batch_size]], order[cfg.batch_size:]
            labels = batch.masked_fill(batch == tokenizer.pad_token_id, -100)
            for group in opt.param_groups:
                group["lr"] = lr_at(step)
            loss = train_step(forward, model, opt, batch, labels)
            losses.append(round(loss.item(), 4))
            bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    seconds = round(time.perf_counter() - t0, 3)
    log = {"config": asdict(cfg), "steps": steps, "blocks": len(blocks),
           "tokens_per_step": cfg.batch_size * cfg.seq_len, "final_loss": losses[-1],
           "losses": losses, "seconds": seconds,
           "parameters": sum(p.numel() for p in model.parameters())}
    if isinstance(opt, MuonWithAdamW):  # the trained weights depend on it (curvmem.muon)
        log["muon_ns_dtype"] = str(opt.muon.ns_dtype).removeprefix("torch.")
    with atomic_dir(out) as tmp:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        (tmp / "train_log.json").write_text(json.dumps(log, indent=1) + "\n")
    return log
