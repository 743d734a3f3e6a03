"""How often a toxicity checkpoint flags *helpful replies to harmful-looking safe prompts* at its operating threshold:
the service's moderation filter must not block the answers the alignment recipes teach (docs/SCORERS.md).

Replies: PHTest's full-compliance answers to its harmless prompts (GPT-3.5 / Claude) and CoCoNot's chosen (helpful)
answers, from the data mirror; a seeded sample of each. Prints a table and writes JSON.

    python scripts/moderation_fp_replies.py --checkpoint models/harmgate/toxicity-minilm/detoxify.ckpt --out fp.json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
from pathlib import Path

PHTEST_FILES = ("claude-3-opus.csv", "claude-3.5-sonnet.csv", "gpt-3.5.csv")


def helpful_replies(mirror: Path) -> dict[str, list[str]]:
    phtest = [r["Response"] for f in PHTEST_FILES
              for r in csv.DictReader((mirror / "contrast" / "phtest" / f).open(encoding="utf-8"))
              if r["Harmfulness"] == "harmless" and r["Response_cls"].strip().endswith("full_compliance")]
    coconot = [json.loads(line)["chosen"]
               for line in (mirror / "contrast" / "coconot" / "coconot_pref.jsonl").open(encoding="utf-8") if line.strip()]
    return {"phtest_harmless_full_compliance": phtest, "coconot_chosen": coconot}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True, help="Detoxify-format checkpoint (its metrics.json beside it)")
    ap.add_argument("--mirror", default=os.environ.get("HARMGATE_DATA_MIRROR", "../shared/data"))
    ap.add_argument("--sample", type=int, default=300, help="replies per set (seeded)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    import torch

    from evals.scorers.detoxify_scorer import load_detoxify

    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    ckpt = Path(args.checkpoint)
    threshold = json.loads((ckpt.parent / "metrics.json").read_text())["threshold"]["threshold"]
    model = load_detoxify(str(ckpt))[0]
    rnd = random.Random(0)
    results = {"checkpoint": str(ckpt), "threshold": threshold, "sets": {}}
    print(f"{'set':34} {'replies':>8} {'flagged':>8} {'rate':>6}")
    for name, texts in helpful_replies(Path(args.mirror)).items():
        sample = rnd.sample(texts, min(args.sample, len(texts)))
        scores = [float(s) for i in range(0, len(sample), 32) for s in model.predict(sample[i:i + 32])["toxicity"]]
        flagged = sorted(((s, t) for s, t in zip(scores, sample) if s >= threshold), reverse=True)
        results["sets"][name] = {"available": len(texts), "scored": len(sample), "flagged": len(flagged),
                                 "rate": len(flagged) / len(sample),
                                 # scores only: the replies are the mirror's data, which is never committed
                                 "flagged_scores": [round(s, 4) for s, _ in flagged]}
        print(f"{name:34} {len(sample):>8} {len(flagged):>8} {len(flagged) / len(sample):>6.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
