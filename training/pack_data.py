"""Pack the labelled training sets into a small folder for a GPU machine (its working tree may
carry at most 64 MiB): each face is cut to the region training can reach (its framing box times
``--margin``, which covers the framing jitter; rotation and scale act on the crop), shrunk so that the box is at most
``--box`` pixels, and stored as a grayscale JPEG (the models read grayscale) under ``images/``. Names and columns
stay as they are, so ``--group-by`` gives the same split; coordinates follow the cut and scale.

    python training/pack_data.py ../shared/data/faces15 ../shared/data/helen_train \\
        ../shared/data/lfpw_train --out .gpudata [--photos ../shared/data/photos]
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from fkpbatch.keypoints import KAGGLE_POINTS
from fkpbatch.transforms import FRAMING_POINTS, Framing, box_from_points

FRAMING = Framing(1.55, 0.4)  # the fkpnet recipe's framing


def pack(source: Path, out: Path, *, box_limit: float, margin: float, quality: int) -> int:
    table = pd.read_csv(source / "keypoints.csv")
    xs = [c for c in table.columns if c.endswith("_x")]
    ys = [c[:-2] + "_y" for c in xs]
    framing_columns = [(f"{n}_x", f"{n}_y") for n in FRAMING_POINTS]
    assert set(KAGGLE_POINTS) <= {c[:-2] for c in xs}
    (out / source.name / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for _, row in table.iterrows():
        found = source / row["image"]
        image = Image.open(found if found.is_file() else source / "images" / row["image"]).convert("L")
        five = np.array([[row[x], row[y]] for x, y in framing_columns], dtype=np.float64)
        box = box_from_points(five, FRAMING)
        half = box.size * margin / 2
        cx, cy = box.x + box.size / 2, box.y + box.size / 2
        left, top = max(0, math.floor(cx - half)), max(0, math.floor(cy - half))
        right, bottom = min(image.width, math.ceil(cx + half)), min(image.height, math.ceil(cy + half))
        image = image.crop((left, top, right, bottom))
        scale = min(1.0, box_limit / box.size)
        if scale < 1.0:
            image = image.resize(
                (max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.LANCZOS
            )
        sx, sy = image.width / (right - left), image.height / (bottom - top)
        packed = row.copy()
        packed[xs] = (row[xs].astype(float) - left + 0.5) * sx - 0.5  # pixel centres stay centres
        packed[ys] = (row[ys].astype(float) - top + 0.5) * sy - 0.5
        image.save(out / source.name / "images" / row["image"], quality=quality)
        rows.append(packed)
    pd.DataFrame(rows).to_csv(out / source.name / "keypoints.csv", index=False, float_format="%.3f")
    return len(rows)


def pack_photos(source: Path, out: Path, *, longest: int, quality: int) -> int:
    """The unlabeled photos, upright and at most ``longest`` px (RGB JPEG): enough for the GPU tests
    and the ~800-px photo benchmark (``benchmarks/gpu_check.sh`` with FKPBATCH_DATA=OUT)."""
    from PIL import ImageOps

    (out / "photos").mkdir(parents=True, exist_ok=True)
    count = 0
    for path in sorted(source.iterdir()):
        try:
            image = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
        except OSError:
            continue
        image.thumbnail((longest, longest), Image.LANCZOS)
        image.save(out / "photos" / (path.stem + ".jpg"), quality=quality)
        count += 1
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sources", nargs="*", type=Path, help="folders with keypoints.csv")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--box", type=float, default=160.0, help="largest framing box kept, pixels")
    parser.add_argument("--margin", type=float, default=1.5, help="region kept around the box, times its size")
    parser.add_argument("--quality", type=int, default=82, help="JPEG quality")
    parser.add_argument("--photos", type=Path, help="also the unlabeled photos folder (../shared/data/photos)")
    parser.add_argument("--photos-longest", type=int, default=800, help="longest side of the packed photos")
    args = parser.parse_args()
    if args.photos:
        print(f"photos: {pack_photos(args.photos, args.out, longest=args.photos_longest, quality=85)} pictures")
    for source in args.sources:
        count = pack(source, args.out, box_limit=args.box, margin=args.margin, quality=args.quality)
        print(f"{source.name}: {count} faces")


if __name__ == "__main__":
    main()
