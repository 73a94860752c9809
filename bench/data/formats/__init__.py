"""Datasets as their publishers distribute them, one reader per published layout, read in two steps so a suite can be
checked before any model is built:

    read_<format>(path, image_root, problems) -> list[Record]   every record's structure, and that its image file
                                                                exists and stays under the image root
    check_images(records, problems)                              every image's header (format and size), not its pixels
    to_samples(records, classnames)                              Samples whose images are read when a batch needs them

A problem of a file itself raises DataError with file = the data file and a fix. A record a cell cannot use (a missing
image, an empty answer, a malformed record) goes to `problems` (bench/data/problems.py), named by file, where =
"record i, field 'x'" (JSONL and CSV add the line number) and a fix; without `problems`, it is raised at once. Record
indices count from 0, as in `data[i]`.

    llava.py           LLaVA conversations JSON (LLaVA-1.5's llava_v1_5_mix665k.json)
    coco.py            COCO captions 2014/2017 (annotations/captions_<split>.json beside <split>/)
    vqa_v2.py          GT-Vision-Lab's VQA v2 (questions + annotations files, complementary pairs, COCO's image names)
    vqa_jsonl.py       VQA as JSONL: {"image", "question", "answers"}
    chartqa.py         ChartQA Dataset/<split>/ (<split>_human.json, <split>_augmented.json, png/), or its JSON files
    preference.py      preference pairs as JSONL: {"image", "prompt", "chosen", "rejected"}
    classification.py  image folders (root/<class>/<image>) and CSV (image,label)
    hf.py              Hugging Face datasets: the Hub's parquet files, save_to_disk folders, the local cache
    common.py          what the readers share;  samples.py: records -> Samples, image checks, the fingerprint
"""

from bench.data.formats.chartqa import chartqa_files, is_chartqa_folder, read_chartqa
from bench.data.formats.classification import read_csv, read_image_folder
from bench.data.formats.coco import coco_image_root, read_coco_captions
from bench.data.formats.common import Record, majority_answer, split_folder
from bench.data.formats.llava import read_llava
from bench.data.formats.preference import read_preference
from bench.data.formats.samples import check_images, dataset_splits, fingerprint, image_of, sorted_classnames, to_samples
from bench.data.formats.vqa_jsonl import read_vqa_jsonl

__all__ = ["Record", "chartqa_files", "check_images", "coco_image_root", "dataset_splits", "fingerprint", "image_of",
           "is_chartqa_folder", "majority_answer", "read_chartqa", "read_coco_captions", "read_csv", "read_image_folder",
           "read_llava", "read_preference", "read_vqa_jsonl", "sorted_classnames", "split_folder", "to_samples"]
