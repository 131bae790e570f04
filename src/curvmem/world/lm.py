"""The embedded synthetic world: a small language, facts, skills and canaries (its tokenizer and
the tiny OLMo-2 trained on it are curvmem.model.lm).

The world stands in for the paper's pretraining corpus, at a size that trains in minutes:

    filler       paragraphs from a small stochastic grammar (held-out samples give perplexity)
    closed_book  invented entities with attributes ("The capital of Velorn is Quist."), each fact
                 seen one of `fact_repeats` times in training (graded exposure), queried later
                 without context
    open_book    a passage of fresh facts, then a question about one of them
    arithmetic   two-digit addition written out with its carry ("Add: 47 + 38 = 7 + 8 = 15,
                 4 + 3 + 1 = 8, so 85."), tested on operand pairs never trained, and its
                 primitives (single-digit facts, carry steps) trained and tested as a table
    logic        in-context deductions: order chains of three of the world's nouns
    documents    memorized documents of four kinds (random words, menus, number tables, licences)
                 and attributed quotes, each repeated in training; never-trained controls
    genres       fresh documents of those kinds, once each in training and in the curvature
                 corpus: every memorized kind is a common genre, a few instances are memorized

`generate_world(config)` returns every split as lists of rows; `write_world(out, ...)` writes them
(layout in docs/lm.md). Everything is a pure function of the config and its seed: each component
draws from its own `random.Random(f"{seed}:{component}")`, so changing one size leaves the others'
samples alone.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path

from curvmem.io import atomic_dir, write_cost
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
LEXICON_SET = frozenset(LEXICON)


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
# Arithmetic is two-digit addition written out digit by digit with its carry (a scratchpad the
# model learns to follow), on single-digit facts and carry steps it is also taught as a table:
# "Add: 47 + 38 = 7 + 8 = 15, 4 + 3 + 1 = 8, so 85." Test sums use operand pairs that never occur
# in training (in either order), so the category measures a learned procedure, not recall; the
# primitives (a single-digit fact, a carry step) are scored apart as subcategories.

OPERANDS = range(10, 100)  # two-digit operands


def digit_fact(a: int, b: int, carry: int = 0) -> tuple[str, str]:
    """A single-digit fact (carry 0) or a carry step (carry 1) as a table line's prompt and
    answer: ("Compute: 4 + 3 + 1 =", "8")."""
    terms = f"{a} + {b}" + (" + 1" if carry else "")
    return f"Compute: {terms} =", str(a + b + carry)


def addition_problem(a: int, b: int) -> tuple[str, str]:
    """Two-digit a + b as (prompt, scratchpad answer): the units, then the tens with the carry,
    then the sum: ("Add: 47 + 38 =", "7 + 8 = 15, 4 + 3 + 1 = 8, so 85")."""
    units = a % 10 + b % 10
    carry = units // 10
    tens = a // 10 + b // 10 + carry
    steps = [f"{a % 10} + {b % 10} = {units}",
             f"{a // 10} + {b // 10}" + (" + 1" if carry else "") + f" = {tens}"]
    return f"Add: {a} + {b} =", f"{', '.join(steps)}, so {a + b}"


def addition_pairs(rng: random.Random) -> list[tuple[int, int]]:
    """Every unordered pair of two-digit operands, shuffled (an operand pair is held out or
    trained in both orders, never split)."""
    pairs = [(a, b) for a in OPERANDS for b in OPERANDS if a <= b]
    rng.shuffle(pairs)
    return pairs


# Logic: a chain of an order relation over three of the world's nouns (one token each: the
# question tests deduction, not copying a fresh multi-token name), asking for an end of the chain.
# The two premises come in chain order ("forward": the top is the first noun) or the other way
# round ("backward": the top is the subject of the second premise), as subcategories: a model
# that reads positions instead of linking the premises fails one of them.
LOGIC_SUBCATEGORIES = ("forward", "backward")
ORDER_RELATIONS = [("older", "oldest", "youngest"), ("taller", "tallest", "shortest"),
                   ("faster", "fastest", "slowest"), ("heavier", "heaviest", "lightest")]


def order_problem(rng: random.Random, backward: bool) -> tuple[str, str]:
    """Three distinct nouns in a chain (each premise: one is <relation> than the next), the
    premises in chain order or (backward) reversed; the question asks for the first or the
    last. (prompt, answer)"""
    adjective, most, least = rng.choice(ORDER_RELATIONS)
    items = rng.sample(NOUNS, 3)
    premises = [f"The {x} is {adjective} than the {y}." for x, y in zip(items, items[1:])]
    if backward:
        premises.reverse()
    ask_most = rng.random() < 0.5
    return (f"{' '.join(premises)} Question: the {most if ask_most else least} is the",
            items[0] if ask_most else items[-1])


def logic_problems(rng: random.Random, n: int, taken: set) -> list[tuple[str, str, str]]:
    """`n` order problems whose prompts are not in `taken` (which is updated), the
    subcategories (LOGIC_SUBCATEGORIES) in turn: [(prompt, answer, subcategory)]."""
    out = []
    for _ in range(1000 * n + 1000):
        if len(out) == n:
            return out
        sub = LOGIC_SUBCATEGORIES[len(out) % len(LOGIC_SUBCATEGORIES)]
        prompt, answer = order_problem(rng, sub == "backward")
        if prompt not in taken:
            taken.add(prompt)
            out.append((prompt, answer, sub))
    raise ValueError("cannot draw that many distinct logic problems; lower the sizes")


# --------------------------------------------------------------------------- memorized documents
# The paper's memorized windows are boilerplate a pretraining corpus repeats: navigation menus,
# number tables, licence text, lists. Ours are drawn fresh per item (no two items share a text) and
# sized by a token estimate, so one fits a 144-token training block and still has 64 + 48 tokens.

MENU_ITEMS = ["Home", "About", "Contact", "Shop", "Cart", "Account", "Login", "Register", "Help",
              "Support", "News", "Blog", "Events", "Careers", "Press", "Gallery", "Downloads",
              "Pricing", "Products", "Services", "Partners", "Team", "History", "Mission",
              "Privacy", "Terms", "Sitemap", "Search", "Archive", "Forum", "Community", "Guides",
              "Offers", "Stores", "Returns", "Shipping", "Orders", "Settings", "Profile",
              "Messages", "Calendar", "Library", "Media", "Projects", "Reports", "Jobs", "Deals",
              "Feedback"]
MENU_ITEMS_SET = frozenset(MENU_ITEMS)
MENU_SEPARATORS = ["|", "/", ">", "-"]
LICENCE_CLAUSES = [  # the same clauses in every licence, a common genre; each names a party,
    # a version or a licensed thing every few words, and a year only before a party (four digit
    # tokens hold few bits), so instances still differ in every run of GUARD_WORDS words and of
    # 16 tokens, whichever words the tokenizer cuts: no fresh licence repeats a memorized one
    "Copyright {year} the {adj} {noun} guild.",
    "Since {year} the {adj} {noun} may {act} this {thing}.",
    "Notice {d}.{e} goes with the {adj} {noun} guild.",
    "The {adj} {noun} gives the {thing} without warranty.",
    "Section {d}.{e}: the {noun} may {act} the {thing}.",
    "Licensed to the {adj} {noun} under version {d}.{e} terms.",
    "The {adj} {noun} is not liable to the {adj2} {noun2}.",
    "Sharing the {thing} needs the {adj} {noun} guild.",
]
LICENCE_YEARS = (1970, 2029)
LICENCE_ACTS = ["use", "copy", "sell", "share", "change", "print", "lend", "show"]  # short words:
# one token each, as the licensed things (the grammar's nouns), so a run of them is not long
DOCUMENT_KINDS = ("random", "menu", "table", "licence")


def estimated_tokens(text: str) -> int:
    """A token count for the world's byte-level BPE, which splits digits one by one: a word, plus
    one per digit or punctuation mark in it (a lone separator is one)."""
    def word(w):
        if not any(c.isalnum() for c in w):
            return 1  # a separator merges with its space
        return 1 + sum(c.isdigit() or not c.isalnum() for c in w)
    return sum(word(w) for w in text.split())


def _grow(rng: random.Random, piece, n_tokens: int) -> str:
    parts: list[str] = []
    have = 0  # estimated_tokens(" ".join(parts)): the estimate adds up over words
    while have < n_tokens:
        parts.append(piece(rng))
        have += estimated_tokens(parts[-1])
    return " ".join(parts)


# tokens per estimated token in the default world's tokenizer (measured on its documents, rounded
# so the shortest stays >= 112 tokens): words that only the documents use (menu items, licence
# terms) are split into more pieces. A document longer than a 144-token block is cut after its
# first 144 tokens in training, and those hold the evaluated 64 + 48.
TOKENS_PER_ESTIMATE = {"random": 1.05, "menu": 1.9, "table": 1.03, "licence": 1.1}
# Menu items are words only menus use, and a tokenizer trained on a world where menus are a common
# genre learns some of them as one token and cuts others into five: tokens per estimated token
# ran from 1.65 to 2.38 over the menus of seeds 0 and 1, and a forget-validation menu came out at
# 109 tokens. No ratio holds for every seed, so a memorized menu gets the estimate's own bound
# (one token per item, one per separator) of the evaluated window: ~230 tokens, the part past one
# 144-token block trained as the next block (pack_documents), never evaluated.
WINDOW_TOKENS = 112  # 64 prefix + 48 suffix: what every memorized document must hold


def document(rng: random.Random, kind: str, n_tokens: int, floor: int = 0) -> str:
    """A memorized 'document' of `kind` (DOCUMENT_KINDS) of about `n_tokens` tokens, and at least
    `floor` estimated ones."""
    if kind in TOKENS_PER_ESTIMATE:
        n_tokens = max(round(n_tokens / TOKENS_PER_ESTIMATE[kind]), floor)
    if kind == "random":  # uniformly random words: no structure to lean on, only memory
        return _grow(rng, lambda r: r.choice(LEXICON), n_tokens)
    if kind == "menu":
        sep = rng.choice(MENU_SEPARATORS)
        return _grow(rng, lambda r: f"{r.choice(MENU_ITEMS)} {sep}", n_tokens)
    if kind == "table":  # rows of a table: a label and three cells, columns set off by "|"
        return _grow(rng, lambda r: f"{r.choice(NOUNS)} | " + " | ".join(
            f"{r.randint(0, 99):02d}" for _ in range(3)) + " ;", n_tokens)
    if kind == "licence":
        def clause(r):
            return r.choice(LICENCE_CLAUSES).format(
                year=r.randint(*LICENCE_YEARS), adj=r.choice(ADJECTIVES), noun=r.choice(NOUNS),
                adj2=r.choice(ADJECTIVES), noun2=r.choice(NOUNS),
                act=r.choice(LICENCE_ACTS), thing=r.choice(NOUNS), d=r.randint(1, 9),
                e=r.randint(0, 9))
        return _grow(rng, clause, n_tokens)
    raise ValueError(f"unknown document kind '{kind}'; choose one of {DOCUMENT_KINDS}")


QUOTE_SUFFIX_WORDS = 8  # the paper scores its quotes on their last 8 tokens


def quote(rng: random.Random, author: str, n_words: int, whole: bool = True) -> str:
    """A saying in the world's grammar, attributed: `Velorn Quist once said: ...`. Whole
    sentences up to at least `n_words` words, or (whole=False) exactly `n_words` words."""
    if whole:
        words: list[str] = []
        while len(words) < n_words:
            words += sentence(rng).split()
        return f"{author} once said: {' '.join(words)}"
    return f"{author} once said: {natural_text(rng, n_words).rstrip('.,')}."


def quote_row(qid: str, text: str, long: bool) -> dict:
    """The paper's quotes format: prefix and target suffix (the last words, with their space)."""
    words = text.split()
    cut = len(words) - QUOTE_SUFFIX_WORDS
    return {"id": qid, "kind": "quote_long" if long else "quote", "text": text,
            "prefix": " ".join(words[:cut]), "suffix": " " + " ".join(words[cut:])}


# --------------------------------------------------------------------------- genres
# Every memorized kind is a common genre, as on the web: training holds fresh documents of each
# kind, seen once, beside the few instances repeated until memorized, and the curvature corpus
# holds other fresh ones. They come from the same generators as the memorized instances and the
# never-trained controls, and share no long run of words with any of those (shares_run).

GENRE_KINDS = DOCUMENT_KINDS + ("quote",)
# A genre document shares no run of GUARD_WORDS words, nor a shorter run of GUARD_TOKENS guard
# tokens (guard_tokens: digits count one by one, as the tokenizer splits them, a menu item as a
# piece per 1.6 letters and another capitalized word outside the lexicon, a name, as 3 pieces),
# with a memorized instance or a control: shorter than the 16-token runs that factor files count
# as memorized positions (none in the default world, measured with its tokenizer)
GUARD_WORDS = 6
GUARD_TOKENS = 12
GENRE_SHARE = 0.5  # of the n_filler once-seen training documents: genre documents, the rest prose
GENRE_TOKENS = (16, 72)  # a genre document's tokens, about (a grammar paragraph has ~55)
CURVATURE_GENRE = {"random": 2.0, "menu": 0.25, "table": 0.4, "licence": 0.8, "quote": 1.0}


def genre_document(rng: random.Random, kind: str, authors: list[str]) -> str:
    """A fresh document of a memorized kind (GENRE_KINDS), shorter than a memorized one."""
    if kind == "quote":
        return quote(rng, rng.choice(authors), rng.randint(*QUOTE_WORDS))
    return document(rng, kind, rng.randint(*GENRE_TOKENS))


def word_runs(text: str, n: int = GUARD_WORDS) -> set[tuple[str, ...]]:
    """The runs of `n` consecutive whitespace-separated words of `text`."""
    words = text.split()
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def guard_tokens(words) -> int:
    """A token count of `words` that errs high: estimated_tokens, but rare words (menu items,
    invented names) in the pieces the default tokenizer cuts them into (1.6 letters a piece for
    menu items, measured; 3 for a name)."""
    def count(w):
        if w in MENU_ITEMS_SET:
            return math.ceil(len(w) / 1.6)
        if w[:1].isupper() and w.lower().strip(".,:;") not in LEXICON_SET:
            return estimated_tokens(w) + 2
        return estimated_tokens(w)
    return sum(count(w) for w in words)


def make_guard(texts) -> list[set]:
    """The runs of 1 .. GUARD_WORDS words of `texts`, by length (index 0: single words)."""
    return [set().union(*(word_runs(t, n) for t in texts)) for n in range(1, GUARD_WORDS + 1)]


def shares_run(text: str, guard: list[set]) -> bool:
    """Whether `text` shares with the guard's texts a run of GUARD_WORDS words, or a shorter one
    of GUARD_TOKENS guard tokens."""
    words = text.split()
    for i in range(len(words)):
        for n in range(1, min(GUARD_WORDS, len(words) - i) + 1):
            run = tuple(words[i:i + n])
            if run not in guard[n - 1]:
                break
            if n == GUARD_WORDS or guard_tokens(run) >= GUARD_TOKENS:
                return True
    return False


def genre_coverage(instances: list[str], corpus: list[str]) -> dict:
    """Share of the word types and of the bigram types of `instances` that occur in `corpus`."""
    def grams(texts, n):
        return {tuple(w[i:i + n]) for t in texts for w in [t.split()]
                for i in range(len(w) - n + 1)}

    out = {}
    for name, n in (("words", 1), ("bigrams", 2)):
        want = grams(instances, n)
        out[name] = len(want & grams(corpus, n)) / len(want) if want else None
        out[f"n_{name}"] = len(want)
    return out


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


def _fresh(rng: random.Random, make, n: int, taken: set, guard: list[set]) -> list:
    """As _unique, and sharing no long run with the texts `guard` was made of (shares_run)."""
    out = []
    for _ in range(1000 * n + 1000):
        if len(out) == n:
            return out
        x = make(rng)
        if x not in taken and not shares_run(x, guard):
            taken.add(x)
            out.append(x)
    raise ValueError("cannot draw that many distinct genre documents that share no long run "
                     "with a memorized one; lower the sizes")


def _split(rows: list, *sizes: int) -> list[list]:
    out, k = [], 0
    for n in sizes:
        out.append(rows[k:k + n])
        k += n
    return out


def generate_world(cfg: WorldConfig) -> dict:
    """Every split of the world as lists of JSON-able rows (see docs/lm.md for the fields)."""
    n_eval = 2 * cfg.n_task_test  # each task category: a validation and a test split, same size
    # one pool of invented names, cut into disjoint roles, so no name crosses a split
    roles = {"entities": cfg.n_entities * 3, "open_train": cfg.n_open_train * 6,
             "open_eval": n_eval * 6, "copy": cfg.n_copy_train * 4,
             "authors": 2 * cfg.n_quotes, "curv_entities": cfg.n_curvature_entities * 3,
             "curv_open": cfg.n_curvature_open * 6, "curv_copy": cfg.n_curvature_copy * 4}
    cut = iter(name_pool(_rng(cfg, "names"), sum(roles.values())))
    names = {role: [next(cut) for _ in range(n)] for role, n in roles.items()}

    train, curvature, texts = [], [], set()

    def add(rows, source, items):
        rows += [{"text": t, "source": source} for t in items]

    # filler: the once-seen training documents are grammar paragraphs and (GENRE_SHARE of
    # them, drawn below) fresh documents of the memorized kinds; fresh held-out paragraphs (two
    # sets: one for the selection's perplexity budget, one reported) and fresh ones for the
    # curvature corpus
    n_genre = round(GENRE_SHARE * cfg.n_filler / len(GENRE_KINDS))
    filler = _unique(_rng(cfg, "filler"), paragraph, cfg.n_filler - n_genre * len(GENRE_KINDS),
                     texts)
    heldout = _unique(_rng(cfg, "heldout"), paragraph, cfg.n_heldout, texts)
    heldout_selection = _unique(_rng(cfg, "heldout_selection"), paragraph, cfg.n_heldout, texts)
    add(train, "filler", filler)
    add(curvature, "filler", _unique(_rng(cfg, "curv_filler"), paragraph,
                                     cfg.n_curvature_filler, texts))

    # closed-book facts at graded exposure: each fact is trained `r` times for one r of
    # cfg.fact_repeats (an equal share of the facts each, drawn at random), in rotating templates
    # (the question form itself and three phrasings); each fact's question goes to the
    # validation or the test split, half of every exposure level to each
    def statements(entity, facts, repeats):
        lines = []
        for attr, value in facts.items():
            forms = [f"{question(attr, entity)} {{v}}."] + ATTRIBUTES[attr][1]
            lines += [forms[k % len(forms)].format(e=entity, v=value)
                      for k in range(repeats[attr])]
        return lines

    rng, facts_of = _rng(cfg, "facts"), {}
    entities, values = names["entities"][:cfg.n_entities], iter(names["entities"][cfg.n_entities:])
    for entity in entities:
        facts_of[entity] = entity_facts(rng, entity, values)
    pairs = [(e, a) for e in entities for a in ATTRIBUTES]
    _rng(cfg, "facts_split").shuffle(pairs)
    levels = cfg.fact_repeats
    width = len(str(max(levels)))
    repeats_of, validation, tests = defaultdict(dict), [], []
    for i, (entity, attr) in enumerate(pairs):
        r = levels[i % len(levels)]
        repeats_of[entity][attr] = r
        # the i-th fact of a level: alternately validation and test
        split = validation if (i // len(levels)) % 2 == 0 else tests
        split.append({"category": "closed_book", "subcategory": f"repeats_{r:0{width}d}",
                      "prompt": question(attr, entity), "answer": facts_of[entity][attr]})
    for entity in entities:
        add(train, "closed_book", statements(entity, facts_of[entity], repeats_of[entity]))
    rng, values = _rng(cfg, "curv_facts"), iter(names["curv_entities"][cfg.n_curvature_entities:])
    for entity in names["curv_entities"][:cfg.n_curvature_entities]:  # facts never trained
        add(curvature, "closed_book", statements(entity, entity_facts(rng, entity, values),
                                                 dict.fromkeys(ATTRIBUTES, 4)))

    # open-book: a passage about two fresh entities, a question about one fact in it
    def open_book(rng, pool):
        facts = []
        for _ in range(2):
            entity = next(pool)
            for attr, value in entity_facts(rng, entity, iter([next(pool), next(pool)])).items():
                facts.append((attr, entity, value))
        shown = rng.sample(facts, cfg.open_facts)
        passage = " ".join(ATTRIBUTES[a][1][0].format(e=e, v=v) for a, e, v in shown)
        attr, entity, value = rng.choice(shown)
        return f"Passage: {passage} {question(attr, entity)}", value

    for role, n, rows in (("open_train", cfg.n_open_train, train),
                          ("curv_open", cfg.n_curvature_open, curvature)):
        rng, pool = _rng(cfg, role), iter(names[role])
        add(rows, "open_book", [" ".join(open_book(rng, pool)) + "." for _ in range(n)])
    rng, pool = _rng(cfg, "open_book_test"), iter(names["open_eval"])
    open_eval = [dict(zip(("prompt", "answer"), open_book(rng, pool))) for _ in range(n_eval)]
    for row, split in zip(open_eval, [validation] * cfg.n_task_test + [tests] * cfg.n_task_test):
        split.append({"category": "open_book", **row})

    # copying practice: fresh names said twice (no test category)
    for role, n, rows in (("copy", cfg.n_copy_train, train),
                          ("curv_copy", cfg.n_curvature_copy, curvature)):
        add(rows, "copy", [f"Repeat: {' '.join(names[role][4 * i:4 * i + 4])}. "
                           f"Again: {' '.join(names[role][4 * i:4 * i + 4])}." for i in range(n)])

    # arithmetic: two-digit sums written out with their carry (addition_problem), on operand
    # pairs drawn apart: validation, test and curvature pairs never occur in training, in either
    # order. The single-digit facts and carry steps are trained as a table, `arith_repeats`
    # times each, and scored as primitives (recall, like closed-book), half of each table in
    # validation and half in test
    pairs = addition_pairs(_rng(cfg, "arithmetic"))
    val_pairs, test_pairs, curv_pairs, train_pairs = _split(
        pairs, cfg.n_task_test, cfg.n_task_test, cfg.n_curvature_arith, len(pairs))
    rng = _rng(cfg, "arithmetic_order")
    problems = [p for a, b in train_pairs for p in ([(a, b), (b, a)] if a != b else [(a, b)])]
    if cfg.n_arith_train > len(problems):
        raise ValueError(f"n_arith_train must be <= {len(problems)} (the two-digit sums left "
                         f"after {2 * cfg.n_task_test + cfg.n_curvature_arith} held-out pairs)")
    for a, b in rng.sample(problems, cfg.n_arith_train):
        add(train, "arithmetic", [" ".join(addition_problem(a, b)) + "."])
    add(curvature, "arithmetic", [" ".join(addition_problem(*rng.sample(p, 2))) + "."
                                  for p in curv_pairs])
    for held, split in ((val_pairs, validation), (test_pairs, tests)):
        split += [dict(zip(("prompt", "answer"), addition_problem(*rng.sample(p, 2))),
                       category="arithmetic", subcategory="sum") for p in held]
    table = [(a, b, c) for c in (0, 1) for a in range(10) for b in range(10)]
    for p in table:
        add(train, "arithmetic", [" ".join(digit_fact(*p)) + "."] * cfg.arith_repeats)
    rng = _rng(cfg, "arithmetic_primitives")
    for carry, sub in ((0, "fact"), (1, "carry")):
        steps = rng.sample([p for p in table if p[2] == carry], 2 * cfg.n_arith_primitive_test)
        for part, split in zip(_split(steps, *[cfg.n_arith_primitive_test] * 2),
                               (validation, tests)):
            split += [dict(zip(("prompt", "answer"), digit_fact(*p)), category="arithmetic",
                           subcategory=sub) for p in part]

    # logic: order chains over the world's nouns (order_problem), forward and backward in
    # turn. Validation and test problems are drawn first; no training or curvature problem
    # repeats one, and the curvature corpus repeats no trained one
    taken: set = set()
    drawn = logic_problems(_rng(cfg, "logic_test"), n_eval, taken)
    for (prompt, answer, sub), split in zip(drawn, [validation] * cfg.n_task_test
                                            + [tests] * cfg.n_task_test):
        split.append({"category": "logic", "subcategory": sub, "prompt": prompt,
                      "answer": answer})
    for component, n, rows in (("logic_train", cfg.n_logic_train, train),
                               ("curv_logic", cfg.n_curvature_logic, curvature)):
        add(rows, "logic", [f"{prompt} {answer}." for prompt, answer, _ in
                            logic_problems(_rng(cfg, component), n, taken)])

    # memorized documents: per kind, distinct texts split into forget / forget_validation
    # (both trained) / control (never trained)
    memorized = {"forget": [], "forget_validation": [], "control": []}
    for kind in DOCUMENT_KINDS:
        rng = _rng(cfg, f"document_{kind}")
        floor = max(cfg.document_floor, WINDOW_TOKENS if kind == "menu" else 0)
        docs = _unique(rng, lambda r, kind=kind, floor=floor: document(r, kind,
                                                                       cfg.document_tokens, floor),
                       3 * cfg.n_documents, texts)
        for split, part in zip(memorized, _split(docs, *[cfg.n_documents] * 3)):
            memorized[split] += [{"id": f"{kind}-{split}-{j}", "kind": kind, "text": t}
                                 for j, t in enumerate(part)]
    for split in ("forget", "forget_validation"):
        for row in memorized[split]:
            train += [{"text": row["text"], "source": "document", "id": row["id"]}] * cfg.document_repeats

    # quotes: the untargeted set, of another kind than the documents (short natural sayings with
    # an author), repeated at another rate; read by no method and no selection rule
    # quoted people: a pool of invented persons, each quoted in several quotes (memorized,
    # control and fresh ones), as a famous person is on the web
    authors = [f"{a} {b}" for a, b in zip(names["authors"][::2], names["authors"][1::2])]
    rng = _rng(cfg, "quotes")
    quotes = {"quotes": [], "quotes_control": []}
    for split in quotes:
        for j in range(cfg.n_quotes):
            long = j < cfg.n_long_quotes  # long enough for the 64 + 48-token evaluation too
            # (its author and "once said:" add ~12 tokens, its words ~10 % more)
            n_words = cfg.document_tokens - 26 if long else rng.randint(*QUOTE_WORDS)
            author = rng.choice(authors)
            text = _unique(rng, lambda r, a=author, n=n_words, w=not long: quote(r, a, n, whole=w),
                           1, texts)[0]
            quotes[split].append(quote_row(f"{split}-{j}", text, long))
    for row in quotes["quotes"]:
        train += [{"text": row["text"], "source": "quote", "id": row["id"]}] * cfg.quote_repeats

    # genres: fresh documents of every memorized kind, once each in training (n_genre per kind)
    # and in the curvature corpus (CURVATURE_GENRE per curvature paragraph), none sharing a
    # long run with a memorized instance or a control (shares_run)
    guard = make_guard([r["text"] for rows in (*memorized.values(), *quotes.values())
                        for r in rows])
    once = [(t, "filler") for t in filler]
    for kind in GENRE_KINDS:
        for component, n, rows in ((f"genre_{kind}", n_genre, train),
                                   (f"curv_genre_{kind}",
                                    round(CURVATURE_GENRE[kind] * cfg.n_curvature_filler),
                                    curvature)):
            docs = _fresh(_rng(cfg, component), lambda r, k=kind: genre_document(r, k, authors),
                          n, texts, guard)
            add(rows, f"genre_{kind}", docs)
            if rows is train:
                once += [(t, f"genre_{kind}") for t in docs]
    # what an unlearning baseline may retain: once-seen training documents, prose and genre
    retain = [{"text": t, "source": source}
              for t, source in _rng(cfg, "retain").sample(once, cfg.n_retain)]

    # task ids: stable names that pair an item across evaluations of one file
    for prefix, rows in (("test", tests), ("validation", validation)):
        for i, row in enumerate(rows):
            row["id"] = f"{prefix}-{i}"
    _rng(cfg, "shuffle").shuffle(train)
    _rng(cfg, "curvature_shuffle").shuffle(curvature)
    return {"train": train, "curvature": curvature, "heldout": [{"text": t} for t in heldout],
            "heldout_selection": [{"text": t} for t in heldout_selection], "retain": retain,
            "tasks": tests, "tasks_validation": validation,
            "canaries_forget": memorized["forget"],
            "canaries_forget_validation": memorized["forget_validation"],
            "canaries_control": memorized["control"], "quotes": quotes["quotes"],
            "quotes_long": [{k: r[k] for k in ("id", "kind", "text")}
                            for r in quotes["quotes"] if r["kind"] == "quote_long"],
            "quotes_control": quotes["quotes_control"]}


QUOTE_WORDS = (16, 30)  # a short quote's words (the long ones have document_tokens words)


# --------------------------------------------------------------------------- writing


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def write_world(out, cfg: WorldConfig) -> dict:
    """Generate the world and write it to directory `out` (replaced atomically). Returns its
    meta (world.json) and "seconds", which goes to the cost file beside `out`, not into it."""
    t0 = time.perf_counter()
    world = generate_world(cfg)
    with atomic_dir(out) as tmp:
        for name, rows in world.items():
            _write_jsonl(tmp / f"{name}.jsonl", rows)
        counts = {name: len(rows) for name, rows in world.items()}
        meta = {"config": asdict(cfg), "counts": counts}
        (tmp / "world.json").write_text(json.dumps(meta, indent=2) + "\n")
    seconds = round(time.perf_counter() - t0, 3)
    write_cost(out, {"seconds": seconds})
    return {**meta, "seconds": seconds}
