"""The embedded default task: short English product, movie and book reviews, generated offline.

A small seeded grammar writes 1-3 sentence reviews of mixed sentiment. Each review is a
sentiment-neutral *opening* ("I bought the Zephyr blender last week, and") followed by a
*continuation* that carries the sentiment (" it broke after two days. The motor is awful.").
That split is what the later stages need: SFT learns to continue openings in every mood, and
RLHF (with VADER as the gold judge, see `prefloop.feedback.gold`) has room to push the model
toward positive continuations.

Items are split once, by a stable hash of their name, into a train part (90%) and an eval part
(10%); only `rl_prompts(split="eval")` draws from the eval part, so evaluation prompts are
about items the model never saw reviewed.

Texts stay short (about 20-35 words) so an opening plus its continuation fits in ~48 tokens of
a 2k-4k byte-level BPE vocabulary.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import random
from dataclasses import dataclass
from typing import Literal

from prefloop.errors import PrefloopError

Sentiment = Literal["pos", "neg", "mixed"]
Split = Literal["train", "eval"]

_EVAL_PERCENT = 10  # share of items held out for evaluation prompts
_SENTIMENT_WEIGHTS = {"pos": 0.4, "neg": 0.4, "mixed": 0.2}


@dataclass(frozen=True)
class Review:
    """One generated review: `text == prompt + response` (the response starts with a space)."""

    text: str
    sentiment: Sentiment
    prompt: str  # sentiment-neutral opening
    response: str  # continuation carrying the sentiment
    domain: str  # "product" | "movie" | "book"


# ---------------------------------------------------------------- vocabulary
# Every word used in openings and item names is absent from VADER's lexicon (tested), so the
# openings score exactly 0 and all sentiment lives in the continuation.

_BRANDS = [
    "Zephyr", "Nimbus", "Aurora", "Vortex", "Orbit", "Summit", "Pebble", "Cobalt", "Juniper",
    "Maple", "Falcon", "Lumen", "Atlas", "Ember", "Willow", "Quartz", "Nova", "Cedar", "Kestrel",
    "Tundra",
]  # fmt: skip
_SHARED_ASPECTS = ["price", "design", "build quality", "packaging"]
_KINDS = {
    "blender": ["motor", "blades", "jar"],
    "headset": ["sound", "battery", "ear cushions"],
    "kettle": ["handle", "lid", "spout"],
    "toaster": ["timer", "slots", "crumb tray"],
    "backpack": ["zippers", "straps", "pockets"],
    "desk lamp": ["light", "base", "switch"],
    "coffee maker": ["carafe", "water tank", "brew timer"],
    "vacuum": ["suction", "battery", "filter"],
    "speaker": ["sound", "bass", "battery"],
    "keyboard": ["keys", "backlight", "cable"],
    "water bottle": ["lid", "straw", "finish"],
    "air fryer": ["basket", "timer", "controls"],
    "office chair": ["cushion", "armrests", "wheels"],
    "phone case": ["grip", "buttons", "edges"],
    "rice cooker": ["inner pot", "timer", "lid"],
}
_MOVIE_ADJ = [
    "Silent", "Last", "Hidden", "Golden", "Midnight", "Distant", "Crimson", "Frozen", "Iron",
    "Wild", "Quiet", "Secret", "Endless", "Hollow", "Northern",
]  # fmt: skip
_MOVIE_NOUN = [
    "Harbor", "River", "Signal", "Kingdom", "Winter", "Station", "Mirror", "Horizon", "Summer",
    "Lighthouse", "Forest", "Empire", "Canyon", "Voyage", "Frontier",
]  # fmt: skip
_BOOK_HEAD = [
    "Keeper", "Garden", "House", "Map", "Song", "Clockmaker", "Daughter", "Island", "Library",
    "Tower", "Orchard", "Painter", "Weaver", "Letters", "Lantern",
]  # fmt: skip
_BOOK_TAIL = [
    "Glass", "Salt", "Stars", "Winter", "Maps", "Tides", "Stone", "Paper", "Rain", "Echoes",
    "Copper", "Feathers", "Smoke", "Silver", "Clouds",
]  # fmt: skip
_ASPECTS = {
    "movie": [
        "acting", "plot", "ending", "soundtrack", "dialogue", "pacing", "cast", "villain",
        "jokes", "special effects", "camera work", "story",
    ],
    "book": [
        "writing", "characters", "plot", "ending", "pacing", "dialogue", "chapters",
        "main character", "world building", "prose", "cover", "story",
    ],
}  # fmt: skip
_PLURAL = {
    "blades", "ear cushions", "slots", "zippers", "straps", "pockets", "keys", "controls",
    "armrests", "wheels", "buttons", "edges", "jokes", "special effects", "characters", "chapters",
}  # fmt: skip

_OPENINGS = {
    "product": [
        "Review of the {item}: I used it for {dur} and",
        "I bought the {item} {when}, and",
        "I have had the {item} for {dur}, and",
        "My {rel} gave me the {item} {when}, and",
        "After {dur} with the {item}, I can say that",
        "So I tried the {item} {when}, and",
        "Quick review of the {item}. After {dur} of daily use,",
        "We replaced our old {kind} with the {item} {when}, and",
    ],
    "movie": [
        "I watched {item} {when} and",
        "Review of {item}: I saw it {when} with my {rel} and",
        "We went to see {item} {when}, and",
        "After watching {item} {when}, I think",
        "My {rel} picked {item} for movie night, and",
        "I caught {item} {when}, and",
    ],
    "book": [
        "I read {item} {when} and",
        "Review of {item}: I finished it {when} and",
        "My book club picked {item}, and",
        "After reading {item} {when}, I think",
        "I borrowed {item} from the library {when}, and",
        "I listened to the audiobook of {item} {when}, and",
    ],
}
_WHEN = {
    "product": [
        "last week", "last month", "in March", "in the spring", "a month ago", "on a whim",
        "after reading the reviews", "for the kitchen", "two weeks ago", "in the fall",
    ],
    "movie": [
        "last night", "on Friday", "over the weekend", "yesterday", "at the cinema",
        "on a long flight", "last week", "on Sunday", "at home", "on a Tuesday evening",
    ],
    "book": [
        "last month", "on the train", "this summer", "in two days", "on my commute",
        "last week", "over the winter", "in one weekend", "at the beach", "before bed",
    ],
}  # fmt: skip
_DURATIONS = [
    "a week", "two weeks", "a month", "three months", "six months", "a year", "ten days",
    "a few days",
]  # fmt: skip
_RELATIVES = ["sister", "brother", "mom", "dad", "partner", "roommate", "neighbor", "cousin"]

# ---------------------------------------------------------------- sentiment phrases
# Continuations lean on words VADER knows, so the gold judge clearly separates the two moods.

_FIRST = {  # first clause, completes any opening of its domain
    ("product", "pos"): [
        "it works great", "I love it", "it has been excellent", "I am very happy with it",
        "it is the best {kind} I have owned", "it is a fantastic buy", "I really enjoy using it",
        "it has been perfect so far", "it is simply wonderful",
    ],
    ("product", "neg"): [
        "it broke after {short}", "I hate it", "it has been a total disappointment",
        "I am very disappointed", "it is the worst {kind} I have owned", "it was a waste of money",
        "it has given me endless trouble", "it failed after {short}", "it is simply terrible",
    ],
    ("movie", "pos"): [
        "I loved it", "it was {adj}", "it is the best film I have seen this year",
        "I enjoyed every minute", "it was a real delight", "it was {adj} from start to finish",
    ],
    ("movie", "neg"): [
        "I hated it", "it was {adj}", "it is the worst film I have seen this year",
        "I was bored the whole time", "it was a waste of two hours",
        "it was {adj} from start to finish",
    ],
    ("book", "pos"): [
        "I loved it", "it was {adj}", "it is the best book I have read this year",
        "I enjoyed every page", "it was a joy to read", "it was {adj} from start to finish",
    ],
    ("book", "neg"): [
        "I hated it", "it was {adj}", "it is the worst book I have read this year",
        "I was bored by every chapter", "it was a waste of time",
        "it was {adj} from start to finish",
    ],
}  # fmt: skip
_SHORT = ["two days", "a week", "three uses", "one month", "a few days", "ten days"]
_ADJ = {
    "pos": [
        "great", "excellent", "amazing", "wonderful", "fantastic", "superb", "impressive", "good",
        "nice", "lovely", "brilliant", "perfect",
    ],
    "neg": [
        "terrible", "awful", "disappointing", "poor", "bad", "horrible", "weak", "lousy",
        "frustrating", "pathetic", "useless", "dreadful",
    ],
}  # fmt: skip
_DOMAIN_ADJ = {
    ("product", "pos"): ["beautiful", "lovely", "really nice"],
    ("product", "neg"): ["ugly", "annoying", "really bad"],
    ("movie", "pos"): ["charming", "delightful", "gorgeous"],
    ("movie", "neg"): ["dull", "boring", "painful"],
    ("book", "pos"): ["charming", "delightful", "beautiful"],
    ("book", "neg"): ["dull", "boring", "painful"],
}
_INTENS = ["", "really ", "very ", "so ", "incredibly ", "absolutely ", "quite ", "rather "]
_VERB = {
    "pos": ["I love the {a}", "I really like the {a}", "I enjoyed the {a}", "I adore the {a}"],
    "neg": ["I hate the {a}", "I disliked the {a}", "I really hated the {a}", "I regret the {a}"],
}
_ASPECT_TEMPLATES = ["The {a} {be} {i}{adj}.", "{verb}.", "Even the {a} {be} {adj}.",
                     "Overall, the {a} {be} {i}{adj}.", "Also, the {a} {be} {i}{adj}."]  # fmt: skip
_CLOSERS = {
    ("product", "pos"): ["Highly recommended!", "I would happily buy it again.",
                         "Worth every penny.", "Best purchase this year.", "Great value."],
    ("product", "neg"): ["Avoid it.", "I want my money back.", "What a waste of money.",
                         "Worst purchase this year.", "Sadly, I regret buying it."],
    ("movie", "pos"): ["Highly recommended!", "I would gladly watch it again.",
                       "A wonderful night out.", "Go see it, you will love it."],
    ("movie", "neg"): ["Avoid it.", "I want those two hours back.", "What a waste.",
                       "Skip it, it is awful."],
    ("book", "pos"): ["Highly recommended!", "I would gladly read it again.",
                      "A wonderful read.", "Read it, you will love it."],
    ("book", "neg"): ["Avoid it.", "I want those hours back.", "What a waste.",
                      "Skip it, it is awful."],
}  # fmt: skip
_BUTS = ["But", "However,", "Sadly, though,", "Still,"]


# ---------------------------------------------------------------- items and the split


def _is_eval_item(name: str) -> bool:
    digest = hashlib.sha256(name.encode()).digest()
    return int.from_bytes(digest[:4], "big") % 100 < _EVAL_PERCENT


@functools.cache
def _items(domain: str, split: Split) -> tuple[tuple[str, str], ...]:
    """(item name, product kind or domain) pairs of one domain in one split."""
    if domain == "product":
        names = [(f"{b} {k}", k) for b in _BRANDS for k in _KINDS]
    elif domain == "movie":
        names = [(f"The {a} {n}", "movie") for a in _MOVIE_ADJ for n in _MOVIE_NOUN]
    else:
        names = [(f"The {h} of {t}", "book") for h in _BOOK_HEAD for t in _BOOK_TAIL if h != t]
    return tuple(x for x in names if _is_eval_item(x[0]) == (split == "eval"))


def _aspects(domain: str, kind: str) -> list[str]:
    return _SHARED_ASPECTS + _KINDS[kind] if domain == "product" else _ASPECTS[domain]


# ---------------------------------------------------------------- the grammar


def _opening(rng: random.Random, split: Split) -> tuple[str, str, str]:
    """A neutral opening; returns (text, domain, kind)."""
    domain = rng.choice(("product", "product", "movie", "book"))
    item, kind = rng.choice(_items(domain, split))
    template = rng.choice(_OPENINGS[domain])
    text = template.format(
        item=item,
        kind=kind,
        dur=rng.choice(_DURATIONS),
        when=rng.choice(_WHEN[domain]),
        rel=rng.choice(_RELATIVES),
    )
    return text, domain, kind


def _adjective(rng: random.Random, domain: str, valence: str) -> str:
    return rng.choice(_ADJ[valence] + _DOMAIN_ADJ[domain, valence])


def _first_clause(rng: random.Random, domain: str, kind: str, valence: str) -> str:
    template = rng.choice(_FIRST[domain, valence])
    adj = rng.choice(_INTENS) + _adjective(rng, domain, valence)
    return template.format(kind=kind, short=rng.choice(_SHORT), adj=adj)


def _pick_aspect(rng: random.Random, domain: str, kind: str, used: set[str]) -> str:
    """An aspect not yet mentioned in this review (so no review praises the lid twice)."""
    aspect = rng.choice([a for a in _aspects(domain, kind) if a not in used])
    used.add(aspect)
    return aspect


def _aspect_sentence(
    rng: random.Random, domain: str, kind: str, valence: str, used: set[str]
) -> str:
    aspect = _pick_aspect(rng, domain, kind, used)
    be = "are" if aspect in _PLURAL else "is"
    verb = rng.choice(_VERB[valence]).format(a=aspect)
    template = rng.choice(_ASPECT_TEMPLATES)
    sentence = template.format(
        a=aspect, be=be, i=rng.choice(_INTENS), adj=_adjective(rng, domain, valence), verb=verb
    )
    return sentence


def _contrast_sentence(
    rng: random.Random, domain: str, kind: str, valence: str, used: set[str]
) -> str:
    """'But the battery is weak.' — an aspect sentence introduced by a contrast word."""
    aspect = _pick_aspect(rng, domain, kind, used)
    be = "are" if aspect in _PLURAL else "is"
    adj = rng.choice(_INTENS) + _adjective(rng, domain, valence)
    return f"{rng.choice(_BUTS)} the {aspect} {be} {adj}."


def _continuation(rng: random.Random, domain: str, kind: str, sentiment: Sentiment) -> str:
    valence = rng.choice(("pos", "neg")) if sentiment == "mixed" else sentiment
    sentences = [_first_clause(rng, domain, kind, valence) + "."]
    used: set[str] = set()
    n_more = rng.choices((0, 1, 2), weights=(0.3, 0.45, 0.25))[0]
    if sentiment == "mixed":
        # the turn: the other mood about one aspect, then optionally a balanced closer
        other = "neg" if valence == "pos" else "pos"
        sentences.append(_contrast_sentence(rng, domain, kind, other, used))
        if n_more == 2:
            sentences.append(rng.choice(("Overall, I have mixed feelings.", "It is a toss-up.")))
    else:
        for k in range(n_more):
            last = k == n_more - 1
            if last and rng.random() < 0.35:
                sentences.append(rng.choice(_CLOSERS[domain, valence]))
            else:
                sentences.append(_aspect_sentence(rng, domain, kind, valence, used))
    return " " + " ".join(sentences)


def _sentiment(rng: random.Random) -> Sentiment:
    labels = list(_SENTIMENT_WEIGHTS)
    return rng.choices(labels, weights=list(_SENTIMENT_WEIGHTS.values()))[0]  # type: ignore[return-value]


def _review(rng: random.Random, split: Split = "train") -> Review:
    prompt, domain, kind = _opening(rng, split)
    sentiment = _sentiment(rng)
    response = _continuation(rng, domain, kind, sentiment)
    return Review(prompt + response, sentiment, prompt, response, domain)


# ---------------------------------------------------------------- public API


def reviews(n: int, seed: int) -> list[Review]:
    """`n` reviews (train items only), a deterministic function of `seed`."""
    rng = random.Random(seed)
    return [_review(rng) for _ in range(n)]


def corpus(n_docs: int, seed: int) -> list[str]:
    """Pretraining documents: one review text each."""
    return [r.text for r in reviews(n_docs, seed)]


def sft_examples(n: int, seed: int) -> list[dict[str, str]]:
    """`{"prompt": neutral opening, "response": continuation}` rows, moods roughly balanced."""
    return [{"prompt": r.prompt, "response": r.response} for r in reviews(n, seed)]


def rl_prompts(n: int, seed: int, split: Split = "train") -> list[str]:
    """`n` distinct neutral openings for pair sampling and PPO; train and eval never overlap
    because they come from disjoint item sets. About 76,000 train and 6,500 eval exist."""
    if split not in ("train", "eval"):
        raise PrefloopError(f"split must be 'train' or 'eval', got {split!r}", field="split")
    every = _all_openings(split)
    if n > len(every):
        raise PrefloopError(
            f"the embedded task has {len(every)} distinct {split} prompts; asked for {n}"
        )
    rng = random.Random(f"rl-prompts/{split}/{seed}")
    seen: dict[str, None] = {}  # insertion-ordered set
    # Draw like the SFT data does (same domain mix); near exhaustion rare openings take
    # long to hit, so top up from a shuffled enumeration after a bounded number of draws.
    for _ in range(20 * n):
        if len(seen) == n:
            return list(seen)
        seen.setdefault(_opening(rng, split)[0])
    rest = [o for o in every if o not in seen]
    rng.shuffle(rest)
    return [*seen, *rest[: n - len(seen)]]


@functools.cache
def _all_openings(split: Split) -> tuple[str, ...]:
    """Every distinct opening of a split (its templates filled every possible way)."""
    out = []
    for domain, templates in _OPENINGS.items():
        for (item, kind), template in itertools.product(_items(domain, split), templates):
            durs = _DURATIONS if "{dur}" in template else [""]
            whens = _WHEN[domain] if "{when}" in template else [""]
            rels = _RELATIVES if "{rel}" in template else [""]
            for dur, when, rel in itertools.product(durs, whens, rels):
                out.append(template.format(item=item, kind=kind, dur=dur, when=when, rel=rel))
    return tuple(dict.fromkeys(out))
