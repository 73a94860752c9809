"""Small copies of public datasets laid out exactly as their publishers distribute them: the same file names, folder
structure and field names, real photographs (tests/imagecorpus.py) with one of each odd image kind among them, and the
odd records real files have (a missing image, an empty answer, a text-only conversation). Each builder writes its
layout under a folder and returns the dataset table a suite in that folder points at it with — the publisher's files
as they are, no conversion — and what a cell leaves out of it under on_bad_sample = "skip", by reason.

    vqa_v2          GT-Vision-Lab's VQA v2: Questions/, Annotations/ (+ complementary pairs), Images/mscoco/<split>/
    coco_captions   COCO 2014 or 2017: annotations/captions_<split>.json beside <split>/
    chartqa         ChartQA Dataset/{train,val,test}/ with <split>_human.json, <split>_augmented.json, png/
    llava_mix       LLaVA-1.5's llava_v1_5_mix665k.json over coco/, gqa/, ocr_vqa/, textvqa/, vg/ image folders
    hub_parquet     a Hub dataset repository's files: data/<split>-0000k-of-0000n.parquet (HuggingFaceM4/ChartQA's
                    columns), read as format chartqa
    trl_preference  TRL's vision preference layout (HuggingFaceH4/rlaif-v_formatted: images, prompt, chosen, rejected
                    as conversational messages) as the Hub's parquet files, and as a save_to_disk folder
"""

from __future__ import annotations

import io
import json
from pathlib import Path

from imagecorpus import KINDS, corpus, photo

# what the layouts' questions and answers look like: words of real data, not the tiny presets' vocabulary
COLORS = ("red", "blue", "green", "white", "black", "yellow")
THINGS = ("shirt", "umbrella", "bus", "kite", "cat", "plate")


def jpeg(i: int, size=(64, 48)) -> bytes:
    buffer = io.BytesIO()
    photo(i, size).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def png(i: int, size=(64, 48)) -> bytes:
    buffer = io.BytesIO()
    photo(i, size).save(buffer, "PNG")
    return buffer.getvalue()


def odd(k: int) -> bytes:
    """The k-th odd image file of the corpus (CMYK, 16-bit, alpha, EXIF orientation, ...), cycling through them."""
    return corpus(KINDS[k % len(KINDS)])[0]


def image_bytes(i: int, n_odd: int, encoder=jpeg) -> bytes:
    """Image i of a layout: the first len(KINDS) are the odd kinds (one of each among the layout's images)."""
    return odd(i) if i < n_odd else encoder(i)


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.write_bytes if isinstance(data, bytes) else path.write_text)(data)
    return path


def question(i: int) -> tuple[str, str]:
    color, thing = COLORS[i % len(COLORS)], THINGS[i % len(THINGS)]
    return f"What color is the {thing}?", color


# ---------------------------------------------------------------- VQA v2


def vqa_v2(root: Path, n_images: int = 10, n_val: int = 5) -> dict:
    """VQA v2 in the VQA API's folders: three questions per image; complementary pairs join the same question on two
    similar images (images 2k and 2k+1); the last training image is not there (its three questions left out)."""
    for split, n, offset in (("train2014", n_images, 0), ("val2014", n_val, 1000)):
        questions, annotations, pairs = [], [], []
        for image in range(n):
            image_id = 9 + offset + image
            for k in range(3):
                qid = image_id * 1000 + k
                text, answer = question(image + k)
                questions.append({"image_id": image_id, "question": text, "question_id": qid})
                answers = [answer] * 7 + [COLORS[(image + k + 1) % len(COLORS)]] * 2 + ["yes"]
                annotations.append({"question_type": "what color is the", "multiple_choice_answer": answer,
                                    "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": j + 1}
                                                for j, a in enumerate(answers)],
                                    "image_id": image_id, "answer_type": "other", "question_id": qid})
                if image % 2 and k == 0:  # this image's first question and its similar neighbour's
                    pairs.append([qid - 1000, qid])
            if not (split == "train2014" and image == n - 1):
                write(root / f"Images/mscoco/{split}/COCO_{split}_{image_id:012d}.jpg",
                      image_bytes(image + (len(KINDS) if offset else 0), len(KINDS)))
        info = {"description": "This is v2.0 of the VQA dataset.", "url": "http://visualqa.org", "version": "2.0",
                "year": 2017, "contributor": "VQA Team", "date_created": "2017-04-26 17:07:13"}
        license = {"url": "http://creativecommons.org/licenses/by/4.0/", "name": "Creative Commons Attribution 4.0"}
        write(root / f"Questions/v2_OpenEnded_mscoco_{split}_questions.json", json.dumps(
            {"info": info, "task_type": "Open-Ended", "data_type": "mscoco", "license": license, "data_subtype": split,
             "questions": questions}))
        write(root / f"Annotations/v2_mscoco_{split}_annotations.json", json.dumps(
            {"info": info, "license": license, "data_subtype": split, "annotations": annotations}))
        write(root / f"Annotations/v2_mscoco_{split}_complementary_pairs.json", json.dumps(pairs))
    return {"table": {"format": "vqa_v2", "path": f"{root.name}/Questions/v2_OpenEnded_mscoco_train2014_questions.json",
                      "eval_path": f"{root.name}/Questions/v2_OpenEnded_mscoco_val2014_questions.json"},
            "task": "vqa", "left_out": {"missing image": 3}}


# ---------------------------------------------------------------- COCO captions


def coco_captions(root: Path, year: int = 2017, n_train: int = 16, n_val: int = 8) -> dict:
    """COCO captions: annotations/captions_<split><year>.json beside <split><year>/; five captions per image; in the
    training split one caption empty (its image kept), one image whose every caption is empty, one image not there."""
    for part, n, offset in (("train", n_train, 0), ("val", n_val, 500)):
        split = f"{part}{year}"
        images, annotations = [], []
        for i in range(n):
            image_id = 139 + offset + i
            file_name = f"COCO_{split}_{image_id:012d}.jpg" if year == 2014 else f"{image_id:012d}.jpg"
            images.append({"license": 4, "file_name": file_name, "coco_url": f"http://images.cocodataset.org/{split}/"
                           f"{file_name}", "height": 48, "width": 64, "date_captured": "2013-11-14 11:18:45",
                           "flickr_url": "http://farm9.staticflickr.com/8186/8119368305_4e622c8349_z.jpg",
                           "id": image_id})
            color, thing = COLORS[i % len(COLORS)], THINGS[i % len(THINGS)]
            for k in range(5):
                caption = f"A {color} {thing} on a table next to a window{'.' if k % 2 else ''}\n"
                if part == "train" and (i == 3 and k == 2 or i == 5):  # one empty caption; every caption of image 5
                    caption = " "
                annotations.append({"image_id": image_id, "id": image_id * 10 + k, "caption": caption})
            if not (part == "train" and i == n - 1):
                write(root / split / file_name, image_bytes(i + (len(KINDS) if part == "val" else 0), len(KINDS)))
        write(root / f"annotations/captions_{split}.json", json.dumps(
            {"info": {"description": f"COCO {year} Dataset", "version": "1.0", "year": year},
             "licenses": [{"url": "http://creativecommons.org/licenses/by-nc-sa/2.0/", "id": 4, "name": "by-nc-sa"}],
             "images": images, "annotations": annotations}))
    return {"table": {"format": "coco_captions", "path": f"{root.name}/annotations/captions_train{year}.json",
                      "eval_path": f"{root.name}/annotations/captions_val{year}.json"},
            "task": "caption", "left_out": {"missing image": 1, "empty answer": 1, "empty caption": 1}}


# ---------------------------------------------------------------- ChartQA


def chartqa(root: Path, n: int = 12) -> dict:
    """ChartQA Dataset/{train,val,test}/ as distributed: each split's human and augmented questions, its png/ charts,
    annotations/ and tables/; in train, one label empty and one chart missing; in val, one chart cut short and one
    corrupt inside."""
    base = root / "ChartQA Dataset"
    for split, offset in (("train", 0), ("val", 100), ("test", 200)):
        for part, first in (("human", 0), ("augmented", n // 2)):
            rows = []
            for i in range(first, first + n // 2):
                imgname = f"{offset + i:05d}{7051 + i}.png"
                label = str(10 + i) if i % 3 else "Yes"
                if split == "train" and i == 1:
                    label = ""
                rows.append({"imgname": imgname, "query": f"What is the value of the {THINGS[i % len(THINGS)]} bar?",
                             "label": label})
                if split == "val" and i == 2:  # cut short: found when its header and tail are read
                    write(base / split / "png" / imgname, png(i)[:300])
                elif split == "val" and i == 3:  # whole, but corrupt inside: found when a batch decodes it
                    data = bytearray(png(i))
                    data[len(data) // 2: len(data) // 2 + 64] = bytes(64)
                    write(base / split / "png" / imgname, bytes(data))
                elif not (split == "train" and i == n - 1):
                    write(base / split / "png" / imgname, image_bytes(i, len(KINDS), png))
                write(base / split / "annotations" / imgname.replace(".png", ".json"), json.dumps(
                    {"type": "v_bar", "general_figure_info": {"title": {"text": "Share"}}, "models": []}))
                write(base / split / "tables" / imgname.replace(".png", ".csv"), "Characteristic,Value\nA,10\n")
            write(base / split / f"{split}_{part}.json", json.dumps(rows, indent=4))
    return {"table": {"format": "chartqa", "path": f"{root.name}/ChartQA Dataset/train",
                      "eval_path": f"{root.name}/ChartQA Dataset/val"},
            "task": "vqa", "left_out": {"missing image": 1, "unreadable image": 1, "empty answer": 1}, "corrupt": 1}


# ---------------------------------------------------------------- LLaVA-1.5 instruction mix


def llava_mix(root: Path, n: int = 30) -> dict:
    """llava_v1_5_mix665k.json over the folders its image paths name: <image> before or after the question, several
    turns, conversations without an image (ShareGPT's), an empty answer, a missing image, a file that is no image."""
    sources = ("coco/train2017/{:012d}.jpg", "gqa/images/{}.jpg", "ocr_vqa/images/{}.jpg",
               "textvqa/train_images/{:016x}.jpg", "vg/VG_100K/{}.jpg")
    records = []
    for i in range(n):
        text, answer = question(i)
        if i % 7 == 5:  # ShareGPT: text only
            records.append({"id": f"i6IyJda_{i}", "model": "", "conversations": [
                {"from": "human", "value": "Write a haiku about rain."},
                {"from": "gpt", "value": "Soft rain on the roof"}]})
            continue
        image = sources[i % len(sources)].format(33471 + i)
        first = f"<image>\n{text}" if i % 2 else f"{text}\n<image>"
        conversations = [{"from": "human", "value": first}, {"from": "gpt", "value": answer}]
        if i % 3 == 0:
            conversations += [{"from": "human", "value": "Is it large?"}, {"from": "gpt", "value": "Yes, it is."}]
        if i == 8:
            conversations[1]["value"] = ""
        records.append({"id": f"{33471 + i:012d}", "image": image, "conversations": conversations})
        if i == 11:  # not an image at all: its header does not read
            write(root / "data" / image, b"<html>404 Not Found</html>")
        elif i != 4:
            write(root / "data" / image, image_bytes(i, len(KINDS)))
    write(root / "llava_v1_5_mix665k.json", json.dumps(records))
    text_only = sum(1 for i in range(n) if i % 7 == 5)
    return {"table": {"format": "llava", "path": f"{root.name}/llava_v1_5_mix665k.json", "image_root": f"{root.name}/data"},
            "task": "vqa", "left_out": {"missing image": 1, "unreadable image": 1, "empty answer": 1,
                                        "text-only record": text_only}}


# ---------------------------------------------------------------- the Hub's parquet files


def hub_parquet(root: Path, n_train: int = 20, n_val: int = 8) -> dict:
    """HuggingFaceM4/ChartQA as its Hub repository holds it: data/train-0000k-of-00002.parquet, data/val-...; columns
    image (datasets.Image: PNG bytes), query, label (a list), human_or_machine. One training label is empty."""
    import datasets

    features = datasets.Features({"image": datasets.Image(), "query": datasets.Value("string"),
                                  "label": datasets.List(datasets.Value("string")),
                                  "human_or_machine": datasets.ClassLabel(names=["human", "machine"])})
    for split, n, shards in (("train", n_train, 2), ("val", n_val, 1)):
        rows = {"image": [], "query": [], "label": [], "human_or_machine": []}
        for i in range(n):
            rows["image"].append({"bytes": image_bytes(i + (7 if split == "val" else 0), len(KINDS), png), "path": None})
            rows["query"].append(f"How many {THINGS[i % len(THINGS)]}s are shown?")
            rows["label"].append(["" if split == "train" and i == 2 else str(i % 5 + 1)])
            rows["human_or_machine"].append(i % 2)
        ds = datasets.Dataset.from_dict(rows, features=features)
        (root / "data").mkdir(parents=True, exist_ok=True)
        for k in range(shards):
            ds.shard(shards, k, contiguous=True).to_parquet(str(root / "data" / f"{split}-{k:05d}-of-{shards:05d}.parquet"))
    write(root / "README.md", "---\nlicense: gpl-3.0\n---\n# ChartQA (a small copy)\n")
    return {"table": {"format": "chartqa", "path": root.name, "hf_split": "train", "hf_eval_split": "val"},
            "task": "vqa", "left_out": {"empty answer": 1}}


# ---------------------------------------------------------------- TRL's vision preference layout


def trl_preference(root: Path, n_train: int = 16, n_test: int = 8, layout: str = "parquet") -> dict:
    """HuggingFaceH4/rlaif-v_formatted's columns: images (a list of one image), prompt, chosen and rejected as
    conversational messages; as the Hub's parquet files or a save_to_disk folder. One chosen answer is empty."""
    import datasets

    def messages(role: str, text: str, image: bool = False) -> list:
        content = ([{"type": "image", "text": None}] if image else []) + [{"type": "text", "text": text}]
        return [{"role": role, "content": content}]

    parts = {}
    for split, n in (("train", n_train), ("test", n_test)):
        rows = {"images": [], "prompt": [], "chosen": [], "rejected": []}
        for i in range(n):
            text, answer = question(i)
            rows["images"].append([{"bytes": image_bytes(i + (5 if split == "test" else 0), len(KINDS)), "path": None}])
            rows["prompt"].append(messages("user", text, image=True))
            rows["chosen"].append(messages("assistant", "" if split == "train" and i == 6 else f"It is {answer}."))
            rows["rejected"].append(messages("assistant", f"It is {COLORS[(i + 2) % len(COLORS)]}."))
        features = datasets.Features({"images": datasets.List(datasets.Image()), "prompt": _messages_feature(),
                                      "chosen": _messages_feature(), "rejected": _messages_feature()})
        parts[split] = datasets.Dataset.from_dict(rows, features=features)
    if layout == "parquet":
        for split, ds in parts.items():
            (root / "data").mkdir(parents=True, exist_ok=True)
            ds.to_parquet(str(root / "data" / f"{split}-00000-of-00001.parquet"))
    else:
        datasets.DatasetDict(parts).save_to_disk(str(root))
    return {"table": {"format": "preference", "path": root.name, "hf_split": "train", "hf_eval_split": "test"},
            "task": "preference", "left_out": {"empty answer": 1}}


def _messages_feature():
    import datasets

    part = {"type": datasets.Value("string"), "text": datasets.Value("string")}
    return datasets.List({"role": datasets.Value("string"), "content": datasets.List(part)})


LAYOUTS = {
    "vqa_v2": vqa_v2,
    "coco2014": lambda root: coco_captions(root, 2014),
    "coco2017": lambda root: coco_captions(root, 2017),
    "chartqa": chartqa,
    "llava_mix": llava_mix,
    "hub_parquet": hub_parquet,
    "trl_preference": trl_preference,
    "trl_preference_saved": lambda root: trl_preference(root, layout="save_to_disk"),
}
