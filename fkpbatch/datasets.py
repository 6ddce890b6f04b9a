"""Training and evaluation data: Kaggle CSVs (96x96 pixels in a column) and folders of photos with
a keypoints CSV. Both become tensors of crops in the model's frame and unit keypoints (NaN = missing)."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import Dataset

from .augment import TrainAugment
from .decode import load_image
from .errors import DataError, DecodeError
from .keypoints import KAGGLE_POINTS, coordinate_columns
from .transforms import FRAMING_POINTS, Box, Framing, box_from_points, crop_face, to_uint8_tensor, to_unit

KAGGLE_SIZE = 96


@dataclass
class FaceTable:
    """Faces with labels: ``images`` are uint8 crops (kaggle) or full photos (folder)."""

    names: list[str]  # image name per row (for grouping and reports)
    points: np.ndarray  # (N, K, 2) float pixels of ``images``; NaN = missing
    images: list  # grayscale PIL images: 96x96 faces (kaggle) or whole photos (folder)
    keypoints: tuple[str, ...]
    source: str
    kaggle: bool
    paths: list[Path] = field(default_factory=list)  # the image files of a folder dataset


def is_kaggle_csv(path: Path) -> bool:
    """Kaggle format is recognised by its ``Image`` column."""
    return "Image" in _read_csv(path, nrows=0).columns


def _read_csv(path: Path, **options) -> pd.DataFrame:
    try:
        return pd.read_csv(path, keep_default_na=True, **options)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the file is empty (a CSV needs a header line and rows)") from None
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read as CSV ({exc})") from None


def _coordinates(frame: pd.DataFrame, path: Path, keypoints: tuple[str, ...]) -> np.ndarray:
    columns = coordinate_columns(keypoints)
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(
            f"{path}: missing keypoint columns {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}"
        )
    values = frame[columns].apply(pd.to_numeric, errors="coerce")
    bad = values.isna() & frame[columns].notna()
    if bad.to_numpy().any():
        row, col = np.argwhere(bad.to_numpy())[0]
        raise DataError(
            f"{path}, line {row + 2}: column {columns[col]} is not a number: {frame[columns[col]].iloc[row]!r}"
        )
    return values.to_numpy(np.float64).reshape(len(frame), len(keypoints), 2)


def parse_kaggle_pixels(text: str, path: Path, line: int) -> np.ndarray:
    """9,216 space-separated 0-255 values -> (96, 96) uint8; errors name file and line."""
    try:
        values = np.array(str(text).split(), dtype=np.float64)
    except ValueError:
        raise DataError(f"{path}, line {line}: Image holds a value that is not a number") from None
    if values.size != KAGGLE_SIZE * KAGGLE_SIZE:
        raise DataError(
            f"{path}, line {line}: Image has {values.size} pixel values, expected {KAGGLE_SIZE * KAGGLE_SIZE} (96x96)"
        )
    if values.min() < 0 or values.max() > 255:
        raise DataError(f"{path}, line {line}: Image pixel values must lie in 0..255")
    return values.reshape(KAGGLE_SIZE, KAGGLE_SIZE).astype(np.uint8)


def load_kaggle_csv(path: Path, *, with_labels: bool = True) -> FaceTable:
    """A Kaggle training.csv (30 keypoint columns + Image) or test.csv (ImageId + Image)."""
    frame = _read_csv(path)
    if "Image" not in frame.columns:
        raise DataError(f"{path}: no 'Image' column; a Kaggle CSV has 9,216 pixel values per row in 'Image'")
    images = [Image.fromarray(parse_kaggle_pixels(t, path, i + 2)) for i, t in enumerate(frame["Image"])]
    points = _coordinates(frame, path, KAGGLE_POINTS) if with_labels else np.full((len(frame), 15, 2), np.nan)
    names = [str(v) for v in frame.get("ImageId", pd.Series(range(1, len(frame) + 1)))]
    return FaceTable(names, points, images, KAGGLE_POINTS, str(path), kaggle=True)


def load_folder_csv(
    path: Path,
    keypoints: tuple[str, ...],
    images_dir: Path | None = None,
    *,
    strict: bool = False,
    warn=print,
    decode: bool = True,
) -> FaceTable:
    """A CSV with ``image`` + keypoint columns in original pixels; images beside the CSV or in
    ``images/`` under it (or ``images_dir``). ``decode=False`` only checks that the files exist."""
    frame = _read_csv(path)
    if "image" not in frame.columns:
        raise DataError(f"{path}: no 'image' column (a folder dataset names each photo in 'image')")
    points = _coordinates(frame, path, keypoints)
    root = images_dir or path.parent
    names, images, paths, kept = [], [], [], []
    missing = []
    for row, name in enumerate(frame["image"].astype(str)):
        candidates = [root / name, root / "images" / name]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            missing.append(f"line {row + 2}: {name}")
            continue
        try:
            if decode:
                images.append(load_image(found).convert("L"))
        except DecodeError as exc:
            missing.append(f"line {row + 2}: {name} ({exc})")
            continue
        names.append(name)
        paths.append(found)
        kept.append(row)
    if missing:
        message = f"{path}: {len(missing)} image(s) missing or unreadable, e.g. {missing[0]}"
        if strict:
            raise DataError(message)
        warn(f"warning: {message}; skipped")
    return FaceTable(names, points[kept], images, keypoints, str(path), kaggle=False, paths=paths)


def split_by_group(names: list[str], val_split: float, group_by: str | None, seed: int) -> np.ndarray:
    """Boolean mask of validation rows. Whole groups (a regex capture of the name, e.g. the person)
    go to one side; the choice hashes the group with the seed, so it does not depend on row order."""
    pattern = re.compile(group_by) if group_by else None
    mask = np.zeros(len(names), dtype=bool)
    for i, name in enumerate(names):
        match = pattern.search(Path(name).stem) if pattern else None
        group = match.group(1) if match and match.groups() else (match.group(0) if match else name)
        digest = hashlib.sha1(f"{seed}:{group}".encode()).digest()
        mask[i] = int.from_bytes(digest[:4], "big") / 2**32 < val_split
    return mask


class FaceDataset(Dataset):
    """Crops + unit keypoints. Folder photos are framed by ``box_from_points`` (the function
    predict uses on detector landmarks) with random jitter when training.

    ``label_offset`` (pixels): how far the labels sit from a mirror-consistent pixel grid. Flips
    and rotations act on the true positions and the offset is added back afterwards, so the
    model learns to reproduce the labels' convention instead of half of it: a flip would
    otherwise turn a +1 px offset into -1 px, and the network would learn neither.
    """

    def __init__(
        self,
        table: FaceTable,
        rows: np.ndarray,
        *,
        input_size: int,
        framing: Framing,
        augment: TrainAugment | None = None,
        jitter: float = 0.0,
        label_offset: tuple[float, float] = (0.0, 0.0),
    ):
        self.table, self.rows = table, np.asarray(rows)
        self.label_offset = np.asarray(label_offset, dtype=np.float64)
        self.input_size, self.framing = input_size, framing
        self.augment, self.jitter = augment, jitter
        self.framing_index = [table.keypoints.index(n) for n in FRAMING_POINTS] if not table.kaggle else None

    def __len__(self) -> int:
        return len(self.rows)

    def box(self, index: int, rng: np.random.Generator | None = None) -> Box:
        """The crop box of row ``index``: the framing of its labelled points, jittered when ``rng``."""
        row = self.rows[index]
        if self.table.kaggle:
            return Box(0.0, 0.0, float(KAGGLE_SIZE))
        box = box_from_points(self.table.points[row][self.framing_index] - self.label_offset, self.framing)
        if rng is None or self.jitter == 0:
            return box
        size = box.size * float(np.exp(rng.normal(0, self.jitter)))
        dx, dy = rng.normal(0, self.jitter, 2) * box.size
        return Box(box.x + dx + (box.size - size) / 2, box.y + dy + (box.size - size) / 2, size)

    def __getitem__(self, index: int):
        # Drawn from torch's generator, which the DataLoader seeds per worker and which moves on
        # every epoch (an epoch counter set in the main process never reaches persistent workers).
        rng = np.random.default_rng(int(torch.randint(2**62, ()))) if self.augment else None
        box = self.box(index, rng)
        image = to_uint8_tensor(crop_face(self.table.images[self.rows[index]], box, self.input_size))
        unit = torch.from_numpy(to_unit(self.table.points[self.rows[index]] - self.label_offset, box)).float()
        if self.augment is not None:
            image, unit = self.augment(image, unit)
        return image, unit + torch.from_numpy(self.label_offset / box.size).float()
