"""Real handwritten digits, offline: scikit-learn's copy of the UCI optical digits (1,797 8x8 images).

The 8x8 grey images (0-16) are scaled to 0-255, upscaled to image_size and made RGB. The same images
give three views: classification ("zero".."nine"), caption ("a handwritten digit three") and vqa
("what digit is this ?" -> "three"). Train and eval never share an image.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image

from bench.data.formats import dataset_splits
from bench.data.sample import DatasetSplits, Sample
from bench.data.vocabulary import COUNTS

CLASSNAMES = COUNTS  # "zero".."nine", also the VQA answers
QUESTION = "what digit is this ?"
VIEWS = ("classification", "caption", "vqa")  # the tasks it gives: no preference view
N_IMAGES = 1797


@lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    data = load_digits()
    pixels = np.rint(data.images * (255.0 / 16.0)).astype(np.uint8)  # values are 0..16
    return pixels, data.target.astype(int)


def _image(pixels: np.ndarray, image_size: int) -> Image.Image:
    grey = Image.fromarray(pixels, "L").resize((image_size, image_size), Image.Resampling.BILINEAR)
    return grey.convert("RGB")


def _captions(name: str) -> tuple[str, ...]:
    # the first is the training target; the others are correct rewordings, as COCO has several
    return (f"a handwritten digit {name}", f"a picture of the digit {name}", f"the handwritten number {name}")


def _sample(pixels: np.ndarray, label: int, task: str, image_size: int) -> Sample:
    image, name = _image(pixels, image_size), CLASSNAMES[label]
    if task == "classification":
        return Sample(image=image, label=label, captions=(f"a photo of the digit {name}",))
    if task == "caption":
        return Sample(image=image, label=label, captions=_captions(name))
    return Sample(image=image, label=label, question=QUESTION, answers=(name,) * 10, turns=((QUESTION, name),))


def digits_dataset(
    task: str,
    *,
    train_size: int = 256,
    eval_size: int = 64,
    image_size: int = 32,
    seed: int = 0,
) -> DatasetSplits:
    if task not in VIEWS:
        raise ValueError(f"task must be one of {VIEWS}, not {task!r}")
    if train_size < 0 or eval_size < 0 or train_size + eval_size > N_IMAGES:
        raise ValueError(f"train_size + eval_size must be at most {N_IMAGES} (the digits set), "
                         f"got {train_size} + {eval_size}")
    pixels, targets = _digits()
    order = np.random.default_rng(np.random.SeedSequence([seed, 0xD161])).permutation(len(targets))
    train = [_sample(pixels[i], int(targets[i]), task, image_size) for i in order[:train_size]]
    evals = [_sample(pixels[i], int(targets[i]), task, image_size) for i in order[train_size : train_size + eval_size]]
    info = {"format": "digits", "source": "sklearn.datasets.load_digits", "seed": seed, "image_size": image_size}
    return dataset_splits(task, train, evals, CLASSNAMES, info)
