"""Write a small synthetic image dataset: coloured shapes and their captions.

    python examples/make_shapes.py OUT_DIR [--format messages|conversations]

OUT_DIR gets img/*.png and train.jsonl (one row per image, messages format by default, the
LLaVA `conversations` format with --format conversations), and a held-out split, eval.jsonl with
its images in eval/*.png: the same colours, shapes and captions, drawn in images the training
never saw (a lighter or darker shade, an off-white background, the shape moved a few pixels), for
`vlmsurgeon eval --compare`. Deterministic; no downloads."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220), "yellow": (230, 200, 30)}
SHAPES = ("circle", "square", "triangle")
# held out: per colour x shape, (shade shift, background, dx, dy), cycled in a fixed order
HELD_OUT = (
    (-25, (245, 245, 240), 2, -2),
    (20, (235, 240, 245), -2, 2),
    (-15, (240, 240, 240), 3, 1),
    (15, (250, 245, 235), -1, -3),
)
PROMPT = "What is in the picture?"


def draw(
    shape: str,
    rgb: tuple[int, int, int],
    size: int = 64,
    background: tuple[int, int, int] = (255, 255, 255),
    dx: int = 0,
    dy: int = 0,
) -> Image.Image:
    image = Image.new("RGB", (size, size), background)
    pen = ImageDraw.Draw(image)
    box = [size // 6 + dx, size // 6 + dy, size - size // 6 + dx, size - size // 6 + dy]
    if shape == "circle":
        pen.ellipse(box, fill=rgb)
    elif shape == "square":
        pen.rectangle(box, fill=rgb)
    else:
        pen.polygon([((box[0] + box[2]) // 2, box[1]), (box[2], box[3]), (box[0], box[3])], fill=rgb)
    return image


def row(name: str, answer: str, fmt: str) -> dict:
    if fmt == "messages":
        return {
            "messages": [{"role": "user", "content": f"<image>{PROMPT}"}, {"role": "assistant", "content": answer}],
            "images": [name],
        }
    return {
        "conversations": [{"from": "human", "value": f"<image>\n{PROMPT}"}, {"from": "gpt", "value": answer}],
        "image": name,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--format", choices=("messages", "conversations"), default="messages")
    args = parser.parse_args()
    (args.out / "img").mkdir(parents=True, exist_ok=True)
    (args.out / "eval").mkdir(parents=True, exist_ok=True)
    rows, held_out = [], []
    for c, (colour, rgb) in enumerate(COLOURS.items()):
        for s, shape in enumerate(SHAPES):
            answer = f"A {colour} {shape}."
            name = f"img/{colour}_{shape}.png"
            draw(shape, rgb).save(args.out / name)
            rows.append(row(name, answer, args.format))
            shift, background, dx, dy = HELD_OUT[(c + s) % len(HELD_OUT)]
            name = f"eval/{colour}_{shape}.png"
            draw(shape, tuple(min(255, max(0, v + shift)) for v in rgb), background=background, dx=dx, dy=dy).save(
                args.out / name
            )
            held_out.append(row(name, answer, args.format))
    (args.out / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (args.out / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in held_out))
    print(args.out / "train.jsonl")
    print(args.out / "eval.jsonl")


if __name__ == "__main__":
    main()
