"""Write a small synthetic image dataset: coloured shapes and their captions.

    python examples/make_shapes.py OUT_DIR [--format messages|conversations]

OUT_DIR gets img/*.png and train.jsonl (one row per image, messages format by default, the
LLaVA `conversations` format with --format conversations), and a held-out split, eval.jsonl with
its images in eval/*.png: the same colours, shapes and captions, drawn in images the training
never saw (a lighter or darker shade, an off-white background, the shape moved a few pixels), for
`vlmsurgeon eval --compare`. Beside each, preference pairs in TRL's conversational format
(pairs.jsonl, eval_pairs.jsonl: prompt / chosen / rejected / images): the true caption chosen, the
same colour with the next shape rejected, for `finetune --objective dpo`; and the same answers
unpaired with a good/bad label (kto.jsonl: TRL's prompt / completion / label) for `--objective kto`.
And prompts for `--objective grpo` in ms-swift's GRPO shape (grpo.jsonl, eval_grpo.jsonl: messages /
images / solution): the colour asked in one word, the colour word the `solution` a reward checks.
Deterministic; no downloads."""

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
COLOUR_PROMPT = "What colour is the shape? Answer in one word."


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


def pair(name: str, colour: str, shape: str) -> dict:
    """TRL's conversational preference row (explicit prompt): only the shape tells them apart."""
    wrong = SHAPES[(SHAPES.index(shape) + 1) % len(SHAPES)]

    def said(text: str) -> list[dict]:
        return [{"role": "assistant", "content": [{"type": "text", "text": text}]}]

    prompt = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT}]}]
    return {
        "prompt": prompt,
        "chosen": said(f"A {colour} {shape}."),
        "rejected": said(f"A {colour} {wrong}."),
        "images": [name],
    }


def prompt(name: str, colour: str) -> dict:
    """ms-swift's GRPO row: the prompt alone (the model writes the answers), the image placed
    before its text, and the `solution` the reward compares them with."""
    return {"messages": [{"role": "user", "content": COLOUR_PROMPT}], "images": [name], "solution": colour}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--format", choices=("messages", "conversations"), default="messages")
    args = parser.parse_args()
    (args.out / "img").mkdir(parents=True, exist_ok=True)
    (args.out / "eval").mkdir(parents=True, exist_ok=True)
    rows, held_out, pairs, held_out_pairs, prompts, held_out_prompts = [], [], [], [], [], []
    for c, (colour, rgb) in enumerate(COLOURS.items()):
        for s, shape in enumerate(SHAPES):
            answer = f"A {colour} {shape}."
            name = f"img/{colour}_{shape}.png"
            draw(shape, rgb).save(args.out / name)
            rows.append(row(name, answer, args.format))
            pairs.append(pair(name, colour, shape))
            prompts.append(prompt(name, colour))
            shift, background, dx, dy = HELD_OUT[(c + s) % len(HELD_OUT)]
            name = f"eval/{colour}_{shape}.png"
            draw(shape, tuple(min(255, max(0, v + shift)) for v in rgb), background=background, dx=dx, dy=dy).save(
                args.out / name
            )
            held_out.append(row(name, answer, args.format))
            held_out_pairs.append(pair(name, colour, shape))
            held_out_prompts.append(prompt(name, colour))
    (args.out / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (args.out / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in held_out))
    (args.out / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pairs))
    (args.out / "eval_pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in held_out_pairs))
    labelled = [
        {"prompt": p["prompt"], "completion": p[side], "label": side == "chosen", "images": p["images"]}
        for p in pairs
        for side in ("chosen", "rejected")
    ]
    (args.out / "kto.jsonl").write_text("".join(json.dumps(r) + "\n" for r in labelled))
    (args.out / "grpo.jsonl").write_text("".join(json.dumps(r) + "\n" for r in prompts))
    (args.out / "eval_grpo.jsonl").write_text("".join(json.dumps(r) + "\n" for r in held_out_prompts))
    for name in ("train", "eval", "pairs", "eval_pairs", "kto", "grpo", "eval_grpo"):
        print(args.out / f"{name}.jsonl")


if __name__ == "__main__":
    main()
