"""The embedded offline demo domains: short generated reviews with a real, measurable domain shift.

Each review describes a domain-specific thing ("the battery", "the plot") with two sentiment cues. A cue is drawn,
per slot, from one of three pools, with domain-specific odds (`mix`):
- shared cues mean the same in every domain ("excellent", "awful"): what transfers;
- domain cues exist only in their domain ("sturdy", "laggy" / "gripping", "tedious"): what a source model never saw;
- flipped cues occur in both domains with opposite polarity ("unpredictable" steering is bad, an unpredictable plot
  is good; a long battery life is good, a long film is not): what a source model gets confidently wrong.
The target (films) leans on domain and flipped cues, so source-only training loses clearly against a target oracle.
Labels are balanced, and 8% are flipped at random (label noise), so no model reaches 100%.
The text depends only on the domain name and size: the same every run, so the tokenization cache is reused.
"""

from __future__ import annotations

import zlib
from typing import Dict, List, Tuple

import numpy as np

from ..errors import TransferError

SHARED = {1: ["excellent", "great", "wonderful", "fantastic", "superb"],
          0: ["awful", "terrible", "disappointing", "horrible", "dreadful"]}
# cue: polarity in gadgets (films use the opposite)
FLIPPED = {"unpredictable": 0, "loud": 1, "long": 1, "simple": 1, "light": 1, "intense": 0, "quiet": 0, "heavy": 0}
LABEL_NOISE = 0.08

DOMAINS: Dict[str, dict] = {
    "demo_gadgets": {
        "things": ["battery", "screen", "charger", "speaker", "keyboard", "remote", "headset", "camera"],
        "openers": ["I bought this last month.", "Used it daily for a week.", "Got it as a gift.", "Quick review:"],
        "cues": {1: ["sturdy", "responsive", "reliable", "compact", "crisp"],
                 0: ["flimsy", "laggy", "glitchy", "overheating", "fragile"]},
        "flip": False,
        "mix": (0.45, 0.30, 0.25),  # shared, domain, flipped
    },
    "demo_films": {
        "things": ["plot", "ending", "soundtrack", "lead actor", "script", "pacing", "finale", "dialogue"],
        "openers": ["Saw it last night.", "Watched this with friends.", "Caught it at the cinema.", "My take:"],
        "cues": {1: ["gripping", "moving", "hilarious", "haunting", "witty"],
                 0: ["tedious", "clumsy", "wooden", "clichéd", "bland"]},
        "flip": True,
        "mix": (0.20, 0.35, 0.45),
    },
}


def _cue(spec: dict, label: int, rng: np.random.Generator) -> str:
    pool = rng.choice(3, p=spec["mix"])
    if pool == 0:
        words = SHARED[label]
    elif pool == 1:
        words = spec["cues"][label]
    else:
        words = [w for w, polarity in FLIPPED.items() if (polarity != label if spec["flip"] else polarity == label)]
    return str(rng.choice(words))


def generate(name: str, size: int) -> Tuple[List[str], List[int]]:
    """`size` reviews of domain `name` and their labels (0 negative, 1 positive), deterministic."""
    if name not in DOMAINS:
        raise TransferError(f"no generated demo domain '{name}'; choose one of {sorted(DOMAINS)}")
    spec = DOMAINS[name]
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    texts, labels = [], []
    for i in range(size):
        label = i % 2
        first, second = rng.choice(spec["things"], size=2, replace=False)
        texts.append(
            f"{rng.choice(spec['openers'])} The {first} is {_cue(spec, label, rng)} "
            f"and the {second} feels {_cue(spec, label, rng)}."
        )
        labels.append(int(1 - label if rng.random() < LABEL_NOISE else label))
    return texts, labels
