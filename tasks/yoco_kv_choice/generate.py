"""Build the yoco_kv_choice data: which key had value X (4-way multiple choice, loglikelihood).

Each document lists ``n`` facts ``The value of key {key} is {value}.`` then asks ``Question: Which
key has the value {value}?\nAnswer:``; the choices are the right key and three other keys of the
list. More pairs make longer contexts (``--pairs``). Deterministic for a given ``--seed``.

    python tasks/yoco_kv_choice/generate.py --pairs 8,16,32 --per-size 20
"""
from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

HERE = Path(__file__).parent
ADJ = ["amber", "quiet", "silver", "rapid", "hollow", "bright", "gentle", "crimson", "frozen", "misty",
       "golden", "lucky", "velvet", "wild", "calm", "brave", "dusty", "eager", "fancy", "humble"]
NOUN = ["falcon", "harbor", "meadow", "cedar", "pine", "canyon", "summit", "delta", "orchard", "valley",
        "marsh", "otter", "ridge", "juniper", "glacier", "lantern", "comet", "willow", "badger", "island"]


def make_doc(rng: random.Random, n_pairs: int) -> dict:
    keys = rng.sample([f"{a}-{b}" for a in ADJ for b in NOUN], n_pairs)
    values = rng.sample(range(1000, 10000), n_pairs)
    facts = "\n".join(f"The value of key {k} is {v}." for k, v in zip(keys, values))
    i = rng.randrange(n_pairs)
    others = rng.sample([k for j, k in enumerate(keys) if j != i], min(3, n_pairs - 1))
    choices = others + [keys[i]]
    rng.shuffle(choices)
    context = f"Here is a list of keys and their values.\n{facts}\nQuestion: Which key has the value {values[i]}?\nAnswer:"
    return {"context": context, "choices": choices, "label": choices.index(keys[i]), "pairs": n_pairs}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", default="8,16,32", help="comma list of facts per document")
    ap.add_argument("--per-size", type=int, default=20, help="test documents per size")
    ap.add_argument("--train", type=int, default=8, help="few-shot (train split) documents, 8 pairs each")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=HERE / "data")
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    sizes = [int(x) for x in args.pairs.split(",") if x.strip()]
    if any(s < 4 for s in sizes):
        ap.error("--pairs: at least 4 facts per document (4 choices)")
    splits = {"test": [make_doc(rng, s) for s in sizes for _ in range(args.per_size)],
              "train": [make_doc(rng, 8) for _ in range(args.train)]}
    args.out.mkdir(parents=True, exist_ok=True)
    for split, docs in splits.items():
        with (args.out / f"{split}.jsonl").open("w") as f:
            for d in docs:
                f.write(json.dumps(d) + "\n")
        print(f"wrote {len(docs)} documents to {args.out / f'{split}.jsonl'}")


if __name__ == "__main__":
    main()
