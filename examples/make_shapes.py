"""Write a small synthetic image dataset: coloured shapes and their captions.

    python examples/make_shapes.py OUT_DIR [--format messages|conversations]

OUT_DIR gets img/*.png and train.jsonl (one row per image, messages format by default, the
LLaVA `conversations` format with --format conversations). Deterministic; no downloads."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220), "yellow": (230, 200, 30)}
SHAPES = ("circle", "square", "triangle")


def draw(shape: str, rgb: tuple[int, int, int], size: int = 64) -> Image.Image:
    image = Image.new("RGB", (size, size), (255, 255, 255))
    pen = ImageDraw.Draw(image)
    box = [size // 6, size // 6, size - size // 6, size - size // 6]
    if shape == "circle":
        pen.ellipse(box, fill=rgb)
    elif shape == "square":
        pen.rectangle(box, fill=rgb)
    else:
        pen.polygon([(size // 2, box[1]), (box[2], box[3]), (box[0], box[3])], fill=rgb)
    return image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--format", choices=("messages", "conversations"), default="messages")
    args = parser.parse_args()
    (args.out / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for colour, rgb in COLOURS.items():
        for shape in SHAPES:
            name = f"img/{colour}_{shape}.png"
            draw(shape, rgb).save(args.out / name)
            answer = f"A {colour} {shape}."
            if args.format == "messages":
                rows.append({"messages": [{"role": "user", "content": "<image>What is in the picture?"},
                                          {"role": "assistant", "content": answer}], "images": [name]})
            else:
                rows.append({"conversations": [{"from": "human", "value": "<image>\nWhat is in the picture?"},
                                               {"from": "gpt", "value": answer}], "image": name})
    (args.out / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(args.out / "train.jsonl")


if __name__ == "__main__":
    main()
