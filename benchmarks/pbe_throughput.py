"""Paint-by-Example pair throughput: pairs/s through ``counterfactory pbe-pairs`` vs a plain loop.

Inputs: synthetic photos (noise on a gradient, one bright box each) with a COCO file, so
boxes come from annotations and no model runs. The baseline is the same per-box work
without the job: Pillow decode, ``transforms.pbe.make_pair``, JPEG/PNG encode and
``webdataset.TarWriter`` in one process. The ratio says what reading, decoding checks,
dedup, the two ledgers and deterministic shards cost.

    python benchmarks/pbe_throughput.py --images 1000 --width 640
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile

import numpy as np
import webdataset
from _common import quiet_logging, timed
from PIL import Image

from jobs import pbe
from schemas import Box
from transforms.io.decode import encode_jpeg
from transforms.masks import encode_mask_png
from transforms.pbe import PbeConfig, make_pair


def make_inputs(folder: pathlib.Path, count: int, width: int) -> pathlib.Path:
    height = width * 3 // 4
    rng = np.random.default_rng(0)
    coco = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "blob"}]}
    for image_id in range(1, count + 1):
        pixels = np.clip(rng.normal(100, 20, (height, width, 3)) + np.linspace(0, 80, width)[None, :, None], 0, 255)
        w, h = int(rng.uniform(0.2, 0.5) * width), int(rng.uniform(0.2, 0.5) * height)
        x, y = int(rng.uniform(0, width - w)), int(rng.uniform(0, height - h))
        pixels[y:y + h, x:x + w] = rng.uniform(150, 255, 3)
        name = f"img_{image_id:06d}.jpg"
        Image.fromarray(pixels.astype(np.uint8)).save(folder / name, quality=90)
        coco["images"].append({"id": image_id, "file_name": name, "width": width, "height": height})
        coco["annotations"].append({"id": image_id, "image_id": image_id, "category_id": 1, "bbox": [x, y, w, h]})
    path = folder / "coco.json"
    path.write_text(json.dumps(coco))
    return path


def baseline(coco_path: pathlib.Path, output: pathlib.Path) -> int:
    coco = json.loads(coco_path.read_text())
    boxes = {a["image_id"]: a["bbox"] for a in coco["annotations"]}
    config = PbeConfig()
    with webdataset.TarWriter(str(output)) as writer:
        for image in coco["images"]:
            with Image.open(coco_path.parent / image["file_name"]) as opened:
                rgb = np.asarray(opened.convert("RGB"))
            x, y, w, h = boxes[image["id"]]
            pair = make_pair(rgb, Box(x, y, x + w, y + h), config, image["id"])
            writer.write({"__key__": f"{image['id']:06d}", "src.jpg": encode_jpeg(pair.target, 95),
                          "mask.png": encode_mask_png(pair.mask), "ref.jpg": encode_jpeg(pair.reference, 95),
                          "json": pair.record})
    return len(coco["images"])



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--width", type=int, default=640, help="Image width; height is 3/4 of it.")
    args = parser.parse_args()
    quiet_logging()
    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(tmp)
        (root / "images").mkdir()
        coco = make_inputs(root / "images", args.images, args.width)
        baseline_s, _ = timed("baseline (Pillow + make_pair + TarWriter loop)", baseline, coco, root / "baseline.tar")
        argv = [f"--annotations={coco}", "--boxes=annotations", f"--output={root / 'job'}"]
        job_s, stats = timed("counterfactory pbe-pairs", pbe.run, argv)
    out = sys.stdout
    out.write(f"images: {args.images} at {args.width}x{args.width * 3 // 4}, one box each (annotations)\n")
    out.write(f"baseline:  {args.images / baseline_s:.1f} pairs/s (1 core)\n")
    out.write(f"pbe-pairs: {stats['boxes_ledger']['written'] / job_s:.1f} pairs/s (1 process), "
              f"{stats['boxes_ledger']['written']} pairs\n")
    out.write(f"ratio pbe-pairs/baseline: {baseline_s / job_s:.2f}\n")


if __name__ == "__main__":
    main()
