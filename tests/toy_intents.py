"""Template-generated intent examples: tiny, deterministic training data for tests of model plumbing
(serving, export, training, the learning loop), where the real datasets would only cost time."""

from __future__ import annotations

import random

__all__ = ["FILLERS", "TEMPLATES", "examples"]

TEMPLATES = {
    "greet": ["hello there {x}", "hi {x}, good morning", "hey {x} how are you"],
    "bye": ["goodbye {x}", "see you later {x}", "bye bye {x}, talk soon"],
    "refund": [
        "i want my money back for the {x}",
        "refund the {x} please",
        "how do i get a refund on {x}",
    ],
    "track": ["where is my {x}", "track my {x} order", "when will the {x} arrive"],
    "cancel": [
        "cancel my {x} order",
        "please stop the {x} subscription",
        "i no longer want the {x}",
    ],
    "upgrade": ["upgrade my {x} plan", "move me to the premium {x}", "i want a bigger {x} tier"],
}
FILLERS = ["parcel", "phone", "account", "laptop", "shoes", "team", "friend", "book"]


def examples(intents: list[str], n: int, seed: int) -> tuple[list[str], list[str]]:
    """n (text, intent) pairs over ``intents``, as (texts,
    intents); the same seed gives the same pairs."""
    rng = random.Random(seed)
    pairs = [
        (rng.choice(TEMPLATES[i]).format(x=rng.choice(FILLERS)), i)
        for i in (rng.choice(intents) for _ in range(n))
    ]
    return [t for t, _ in pairs], [i for _, i in pairs]
