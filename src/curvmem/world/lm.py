"""The embedded synthetic world: a small language, facts, skills and canaries (its tokenizer and
the tiny OLMo-2 trained on it are curvmem.model.lm).

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
import random
import time
from dataclasses import asdict
from pathlib import Path

from curvmem.io import atomic_dir
from curvmem.presets import WorldConfig

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
