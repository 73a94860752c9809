"""Synthetic scenes: 1-4 coloured shapes on a background, drawn deterministically with numpy + PIL.

Each scene has a main group (1-3 copies of one shape in one colour, in one region of the image)
and sometimes a small distractor of another shape and colour in the opposite region. The same
scenes give four views: classification (the main shape), caption (several correct wordings),
vqa (colour / shape / count / position questions with ten annotator answers) and preference (the vqa
question, its majority answer chosen and a plausible wrong answer of the same kind rejected).

Two distributions:
- "source": colour-shape pairs outside HELD_OUT, dark or gray backgrounds, mostly large shapes;
- "target" (shifted): half the scenes use the held-out pairs, gray (2/3) or light backgrounds,
  mostly small shapes, and pixel noise. The shapes themselves look the same, so a model trained on
  source is above chance on target and gains from fine-tuning there. Measured with a 3-layer CNN
  (3 seeds): trained on 1,024 source scenes it scores 30-38% on target (chance 25%), 48-76% after
  fine-tuning on 128 target scenes. (All-light target backgrounds put it below chance: the inverted
  contrast defeats it, hence the gray share.)

Scene content depends only on (split, seed, part, index), never on the task or image size, so the
views and sizes of one seed show the same scenes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from bench.data.formats import dataset_splits, majority_answer
from bench.data.sample import TASKS, DatasetSplits, Sample
from bench.data.vocabulary import COLORS, COUNTS, DIGITS, POSITION_SYNONYMS, POSITIONS, SHAPES, SHAPES_PLURAL

SPLITS = ("source", "target")

RGB = {
    "red": (220, 40, 40), "green": (40, 180, 60), "blue": (50, 80, 230), "yellow": (240, 220, 40),
    "purple": (150, 60, 200), "orange": (250, 140, 30), "white": (245, 245, 245), "cyan": (40, 215, 225),
}
BACKGROUND_RGB = {"dark": (25, 25, 30), "light": (222, 222, 215), "gray": (120, 120, 120)}
# Colour-shape pairs never seen in source: two colours per shape (8 of the 32 pairs).
HELD_OUT = frozenset((s, c) for i, s in enumerate(SHAPES) for j, c in enumerate(COLORS) if j % 4 == i)

# Shape half-widths as fractions of the image side.
RADIUS = {"large": 0.14, "small": 0.09}
DISTRACTOR_RADIUS = 0.08
# Where the copies of the main group sit, per region and count (fractions of the image side).
SLOTS = {
    "left": {1: [(0.18, 0.5)], 2: [(0.18, 0.3), (0.18, 0.7)], 3: [(0.18, 0.17), (0.18, 0.5), (0.18, 0.83)]},
    "right": {1: [(0.82, 0.5)], 2: [(0.82, 0.3), (0.82, 0.7)], 3: [(0.82, 0.17), (0.82, 0.5), (0.82, 0.83)]},
    "top": {1: [(0.5, 0.18)], 2: [(0.3, 0.18), (0.7, 0.18)], 3: [(0.17, 0.18), (0.5, 0.18), (0.83, 0.18)]},
    "bottom": {1: [(0.5, 0.82)], 2: [(0.3, 0.82), (0.7, 0.82)], 3: [(0.17, 0.82), (0.5, 0.82), (0.83, 0.82)]},
    "center": {1: [(0.5, 0.5)], 2: [(0.34, 0.5), (0.66, 0.5)], 3: [(0.5, 0.34), (0.34, 0.66), (0.66, 0.66)]},
}
PHRASE = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom",
          "center": "in the center"}
QUESTION_KINDS = ("color", "shape", "count", "position")


@dataclass(frozen=True)
class Distribution:
    backgrounds: tuple[str, ...]  # drawn uniformly (repeat one to weight it)
    held_out: float  # probability of a HELD_OUT colour-shape pair; 0 means never one
    small: float  # probability that the main group is small
    noise: float  # pixel noise std on the 0-255 scale


DISTRIBUTIONS = {
    "source": Distribution(backgrounds=("dark", "gray"), held_out=0.0, small=0.25, noise=0.0),
    "target": Distribution(backgrounds=("gray", "gray", "light"), held_out=0.5, small=0.6, noise=6.0),
}


@dataclass(frozen=True)
class Item:
    shape: str
    color: str
    x: float  # centre, fraction of the image side
    y: float
    radius: float


@dataclass(frozen=True)
class Scene:
    background: str
    shape: str  # the main group's shape: the classification label
    color: str
    count: int
    position: str
    size: str
    distractor: tuple[str, str] | None  # (shape, color)
    items: tuple[Item, ...]
    noise: float  # pixel noise std (0-255 scale)
    noise_seed: int
    question_kind: str
    n_captions: int
    caption_order: tuple[int, ...]
    n_synonyms: int  # how many of the ten annotators give the synonym answer, where one exists


def _choose(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def make_scene(rng: np.random.Generator, split: str) -> Scene:
    dist = DISTRIBUTIONS[split]
    background = _choose(rng, dist.backgrounds)
    shape = _choose(rng, SHAPES)
    if dist.held_out > 0 and rng.random() < dist.held_out:  # source draws nothing here: its scenes stay put
        pool = [c for c in COLORS if (shape, c) in HELD_OUT]
    else:
        pool = [c for c in COLORS if dist.held_out > 0 or (shape, c) not in HELD_OUT]
    if background == "light":
        pool = [c for c in pool if c != "white"] or ["red"]  # white on light grey would be invisible
    color = _choose(rng, pool)
    count = int(rng.integers(1, 4))
    position = _choose(rng, tuple(SLOTS))
    size = "small" if rng.random() < dist.small else "large"

    radius = RADIUS[size]
    items = [
        Item(shape, color, x + rng.uniform(-0.03, 0.03), y + rng.uniform(-0.03, 0.03), radius)
        for x, y in SLOTS[position][count]
    ]
    distractor = None
    # only beside a large main group, so the main shape stays the dominant one
    if size == "large" and rng.random() < 0.4:
        d_shape = _choose(rng, [s for s in SHAPES if s != shape])
        d_color = _choose(rng, [c for c in COLORS if c != color and not (background == "light" and c == "white")])
        distractor = (d_shape, d_color)
        items.append(Item(d_shape, d_color, *_opposite(rng, position), DISTRACTOR_RADIUS))

    n_captions = int(rng.integers(3, 6))
    return Scene(
        background=background, shape=shape, color=color, count=count, position=position, size=size,
        distractor=distractor, items=tuple(items),
        noise=dist.noise, noise_seed=int(rng.integers(2**31)),
        question_kind=_choose(rng, QUESTION_KINDS),
        n_captions=n_captions, caption_order=tuple(int(i) for i in rng.permutation(4)),
        n_synonyms=int(rng.integers(0, 4)),
    )


def _opposite(rng: np.random.Generator, position: str) -> tuple[float, float]:
    along = rng.uniform(0.2, 0.8)
    if position == "left":
        return 0.85, along
    if position == "right":
        return 0.15, along
    if position == "top":
        return along, 0.85
    if position == "bottom":
        return along, 0.15
    return _choose(rng, ((0.13, 0.13), (0.87, 0.13), (0.13, 0.87), (0.87, 0.87)))


def render(scene: Scene, image_size: int) -> Image.Image:
    """Draw supersampled, then box-filter down: smooth edges at small sizes, same scene at any size."""
    scale = max(1, min(4, 512 // image_size))
    side = image_size * scale
    canvas = Image.new("RGB", (side, side), BACKGROUND_RGB[scene.background])
    draw = ImageDraw.Draw(canvas)
    for item in scene.items:
        _draw_shape(draw, item, side)
    image = canvas.resize((image_size, image_size), Image.Resampling.BOX) if scale > 1 else canvas
    if scene.noise:
        pixels = np.asarray(image, dtype=np.float32)
        pixels += np.random.default_rng(scene.noise_seed).normal(0.0, scene.noise, pixels.shape)
        image = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "RGB")
    return image


def _draw_shape(draw: ImageDraw.ImageDraw, item: Item, side: int) -> None:
    cx, cy, r = item.x * side, item.y * side, item.radius * side
    fill = RGB[item.color]
    if item.shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif item.shape == "square":
        h = 0.85 * r  # a square of the same half-width looks larger than the circle
        draw.rectangle((cx - h, cy - h, cx + h, cy + h), fill=fill)
    elif item.shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + 0.8 * r), (cx + r, cy + 0.8 * r)], fill=fill)
    elif item.shape == "cross":
        t = 0.33 * r
        draw.rectangle((cx - r, cy - t, cx + r, cy + t), fill=fill)
        draw.rectangle((cx - t, cy - r, cx + t, cy + r), fill=fill)
    else:  # pragma: no cover - SHAPES is closed
        raise ValueError(item.shape)


# ---------------------------------------------------------------- texts


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _group(scene: Scene, *, size: bool = False) -> str:
    """'a red circle', 'two small red circles'."""
    adjectives = f"{scene.size} {scene.color}" if size else scene.color
    if scene.count == 1:
        return f"{_article(adjectives)} {adjectives} {scene.shape}"
    return f"{COUNTS[scene.count]} {adjectives} {SHAPES_PLURAL[SHAPES.index(scene.shape)]}"


def class_caption(scene: Scene) -> str:
    return f"a photo of {_article(scene.color)} {scene.color} {scene.shape}"


def captions(scene: Scene) -> tuple[str, ...]:
    """The first caption has one fixed wording (training uses it); the others vary it, all correct."""
    group, place = _group(scene), PHRASE[scene.position]
    verb = "is" if scene.count == 1 else "are"
    if scene.distractor:
        d_shape, d_color = scene.distractor
        fourth = f"{group} and {_article(d_color)} small {d_color} {d_shape}"
    else:
        fourth = f"a picture of {group}"
    others = (
        f"there {verb} {group} {place}",
        f"a photo of {_group(scene, size=True)}",
        f"{group} on {_article(scene.background)} {scene.background} background",
        fourth,
    )
    return (f"{group} {place}",) + tuple(others[i] for i in scene.caption_order[: scene.n_captions - 1])


def question_answers(scene: Scene) -> tuple[str, tuple[str, ...]]:
    """One question with a single-word answer, and ten annotator answers (some give a synonym)."""
    plural = SHAPES_PLURAL[SHAPES.index(scene.shape)]
    one = scene.count == 1
    kind = scene.question_kind
    if kind == "color":
        question = f"what color is the {scene.shape} ?" if one else f"what color are the {plural} ?"
        answer = scene.color
    elif kind == "shape":
        question = f"what shape is {PHRASE[scene.position]} ?"
        answer = scene.shape
    elif kind == "count":
        question = f"how many {plural} are there ?"
        answer = DIGITS[scene.count]
    else:
        question = (f"where is the {scene.color} {scene.shape} ?" if one
                    else f"where are the {scene.color} {plural} ?")
        answer = scene.position
    synonym = POSITION_SYNONYMS.get(answer) if kind == "position" else None
    n_syn = scene.n_synonyms if synonym else 0
    return question, (answer,) * (10 - n_syn) + (synonym,) * n_syn


def rejected_answer(scene: Scene) -> str:
    """A plausible wrong answer to the scene's question, of the same kind: the distractor's colour or shape where
    there is one (it is in the picture), else another colour / shape; a count one off; another position. Drawn from
    the scene's own seed, so it depends on (split, seed, part, index) alone and the scene stream is left as it was."""
    rng = np.random.default_rng([scene.noise_seed, 0x4E7EC7])
    kind = scene.question_kind
    if kind == "color":
        return scene.distractor[1] if scene.distractor else _choose(rng, [c for c in COLORS if c != scene.color])
    if kind == "shape":
        return scene.distractor[0] if scene.distractor else _choose(rng, [s for s in SHAPES if s != scene.shape])
    if kind == "count":
        return DIGITS[_choose(rng, [n for n in (scene.count - 1, scene.count + 1) if n >= 1])]
    return _choose(rng, [p for p in POSITIONS if p != scene.position])  # never "middle" for center: a synonym


LABELS = ("shape", "object")
# "object" classes: every colour-shape pair; the target split's held-out pairs are new combinations
OBJECT_CLASSES = tuple(f"{c} {s}" for s in SHAPES for c in COLORS)


def classnames_for(label: str) -> tuple[str, ...]:
    return SHAPES if label == "shape" else OBJECT_CLASSES


def to_sample(scene: Scene, task: str, image_size: int, label: str = "shape") -> Sample:
    image = render(scene, image_size)
    if task == "classification" and label == "object":
        # no caption: CLIP trains on its prompt template over the class name, exactly what zero-shot evaluates
        return Sample(image=image, label=OBJECT_CLASSES.index(f"{scene.color} {scene.shape}"))
    label = SHAPES.index(scene.shape)
    if task == "classification":
        return Sample(image=image, label=label, captions=(class_caption(scene),))
    if task == "caption":
        return Sample(image=image, label=label, captions=captions(scene))
    question, answers = question_answers(scene)
    if task == "preference":
        chosen = majority_answer(answers)
        return Sample(image=image, label=label, question=question, answers=(chosen,), rejected=rejected_answer(scene),
                      turns=((question, chosen),))
    return Sample(image=image, label=label, question=question, answers=answers, turns=((question, answers[0]),))


# ---------------------------------------------------------------- public


def generate_scenes(n: int, *, split: str, seed: int, part: str) -> list[Scene]:
    """The scene specs of one part ("train" or "eval"); independent streams per (seed, split, part)."""
    stream = np.random.SeedSequence([seed, SPLITS.index(split), ("train", "eval").index(part), 0x5CE4E])
    rng = np.random.default_rng(stream)
    return [make_scene(rng, split) for _ in range(n)]


def scenes_dataset(
    task: str,
    *,
    split: str = "target",
    train_size: int = 256,
    eval_size: int = 64,
    image_size: int = 32,
    seed: int = 0,
    label: str = "shape",
) -> DatasetSplits:
    """`label` (classification view): "shape" (4 classes) or "object" (colour + shape, 32 classes)."""
    if label not in LABELS:
        raise ValueError(f"label must be one of {LABELS}, not {label!r}")
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, not {task!r}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
    if train_size < 0 or eval_size < 0 or image_size < 8:
        raise ValueError("train_size and eval_size must be >= 0 and image_size >= 8")
    train = [to_sample(s, task, image_size, label) for s in generate_scenes(train_size, split=split, seed=seed, part="train")]
    evals = [to_sample(s, task, image_size, label) for s in generate_scenes(eval_size, split=split, seed=seed, part="eval")]
    info = {"format": "scenes", "split": split, "seed": seed, "image_size": image_size, "label": label}
    return dataset_splits(task, train, evals, classnames_for(label), info)
