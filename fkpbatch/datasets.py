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
from .decode import load_image, open_image
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
    warn=None,
    decode: bool = True,
) -> FaceTable:
    """A CSV with ``image`` + keypoint columns in original pixels; images beside the CSV or in
    ``images/`` under it (or ``images_dir``). ``decode=False`` only checks that the files exist
    (and reads their size from the header).

    A row is skipped (with one counted warning through ``warn``, default: stderr; a DataError with
    ``strict``) when its image is missing or unreadable, or when one of the five framing points
    (:data:`FRAMING_POINTS`, which place the face's crop) is empty, not finite, more than
    :data:`FRAMING_RANGE` image sizes away, or all of them fall on one spot: no crop can be made
    from it, for training (the crop) or evaluation (the Kaggle-unit scale) alike."""
    warn = warn or _warn_stderr
    frame = _read_csv(path)
    if "image" not in frame.columns:
        raise DataError(f"{path}: no 'image' column (a folder dataset names each photo in 'image')")
    points = _coordinates(frame, path, keypoints)
    framing = [keypoints.index(n) for n in FRAMING_POINTS] if set(FRAMING_POINTS) <= set(keypoints) else None
    root = images_dir or path.parent
    names, images, paths, kept = [], [], [], []
    missing, unframed = [], []
    for row, name in enumerate(frame["image"].astype(str)):
        candidates = [root / name, root / "images" / name]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            missing.append(f"line {row + 2}: {name}")
            continue
        why = _unframed(points[row][framing], None) if framing else None  # before the image is decoded
        if why:
            unframed.append(f"line {row + 2} ({name}: {why})")
            continue
        try:
            image = load_image(found).convert("L") if decode else None
        except DecodeError as exc:
            missing.append(f"line {row + 2}: {name} ({exc})")
            continue
        size = image.size if image is not None else _header_size(found)
        why = _unframed(points[row][framing], size) if framing and size else None
        if why:
            unframed.append(f"line {row + 2} ({name}: {why})")
            continue
        if image is not None:
            images.append(image)
        names.append(name)
        paths.append(found)
        kept.append(row)
    for count, what, example in (
        (len(missing), "image(s) missing or unreadable", missing[:1]),
        (len(unframed), "row(s) skipped: framing points missing or not finite", unframed[:1]),
    ):
        if not count:
            continue
        message = f"{path}: {count} {what}, e.g. {example[0]}"
        if strict:
            raise DataError(message)
        warn(f"warning: {message}{'; skipped' if what.startswith('image') else ''}")
    return FaceTable(names, points[kept], images, keypoints, str(path), kaggle=False, paths=paths)


# A framing point further than this many image sizes (the longer side) from the image is a typo or a
# sentinel, not a face: the crop would be absurd (or, for 1e300, not computable).
FRAMING_RANGE = 100


def _unframed(framing: np.ndarray, size: tuple[int, int] | None) -> str | None:
    """Why these five framing points (rows in FRAMING_POINTS order) cannot place a crop, or None.
    ``size``: the image's (width, height), for the range check (None: not checked yet)."""
    for (point, axis), value in zip(((p, a) for p in FRAMING_POINTS for a in "xy"), framing.reshape(-1)):
        if np.isnan(value):
            return f"{point}_{axis} empty"
        if not np.isfinite(value):
            return f"{point}_{axis} = {value}"
        if size is not None and abs(value) > FRAMING_RANGE * max(size):
            return f"{point}_{axis} = {value:g}, over {FRAMING_RANGE}x the image size"
    if not box_from_points(framing, Framing()).size > 0:
        return "all five at one spot"
    return None


def _header_size(path: Path) -> tuple[int, int] | None:
    """An image's size from its header, without decoding it; None if it cannot be read (predict
    will say why in its row)."""
    try:
        with open_image(path) as image:
            return image.size
    except Exception:  # noqa: BLE001 - any reader error: the size is only needed for a sanity check
        return None


def _warn_stderr(message: str) -> None:
    from .progress import say

    say(message)  # a line that cannot be written (a full disk) is dropped, the work goes on


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
