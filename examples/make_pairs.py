"""Preference pairs from a model's own answers (on-policy, as RLAIF-V builds them): for each row
where the model's answer differs from the reference, the reference is chosen and the model's
answer rejected. Rows it already answers right make no pair (chosen would equal rejected).

    python examples/make_pairs.py DATA.jsonl PREDICTIONS.jsonl OUT.jsonl [--model model]

DATA.jsonl: messages rows with `images` (examples/make_shapes.py); PREDICTIONS.jsonl: what
`vlmsurgeon eval MODEL --data DATA.jsonl -o DIR` wrote (DIR/predictions.jsonl). OUT.jsonl: TRL's
conversational preference rows (prompt / chosen / rejected / images). Prints how many pairs."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("predictions", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--model", default="model", help="which model's answers are rejected")
    args = parser.parse_args()
    rows = {n: json.loads(line) for n, line in enumerate(args.data.read_text().splitlines(), 1) if line.strip()}
    pairs, right = [], 0
    for line in args.predictions.read_text().splitlines():
        scored = json.loads(line)
        answer, reference = scored["predictions"][args.model].strip(), scored["reference"].strip()
        if answer == reference:
            right += 1
            continue
        row = rows[scored["row"]]
        question = row["messages"][0]["content"].replace("<image>", "")
        images = [str((args.data.parent / p).resolve().relative_to(args.out.parent.resolve())) for p in row["images"]]
        pairs.append(
            {
                "prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}],
                "chosen": [{"role": "assistant", "content": [{"type": "text", "text": reference}]}],
                "rejected": [{"role": "assistant", "content": [{"type": "text", "text": answer or "…"}]}],
                "images": images,
            }
        )
    args.out.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    print(f"{args.out}: {len(pairs)} pair(s); {right} row(s) already answered right made none")


if __name__ == "__main__":
    main()
