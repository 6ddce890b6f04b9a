"""``predict --engine ray``: the same pipeline as a Ray Data job, for many machines.

File listing (driver) -> decode, detect and crop (Ray tasks on CPUs, the same ``FaceCropper`` the
local DataLoader workers run) -> keypoints in an actor pool that loads the model once per actor
(``Predictor.results``, on GPUs when asked) -> rows written as shards (CSV, JSONL or Parquet) under
an output folder. Ray is an optional extra: ``pip install 'fkpbatch[ray]'``.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .checkpoint import ModelSpec, load_model
from .cropping import FaceCropper
from .discover import InputFile, discover
from .engine import Predictor
from .errors import UsageError
from .keypoints import has_ibug68
from .options import PredictOptions, Runtime
from .results import CropRecord, RowLayout
from .transforms import Box
from .zoo import resolve_weights

RAY_FORMATS = ("csv", "jsonl", "parquet")


def _item(row: dict) -> InputFile:
    return InputFile(
        Path(os.fsdecode(row["path"])),
        row["name"],
        bool(row["skip"]),
        row["relative"],
        error=row.get("error") or "",
        skip_reason=row.get("skip_reason") or "",
    )


@lru_cache(maxsize=4)
def _cropper(spec_json: str, options: PredictOptions) -> FaceCropper:
    """One cropper (and detector session) per Ray worker process, reused across tasks."""
    torch.set_num_threads(1)
    return FaceCropper(ModelSpec.from_dict(json.loads(spec_json)), options)


def _crop(row: dict, spec_json: str, options: PredictOptions) -> dict:
    """Ray map task: one input row -> the cropper's record, flattened to Arrow-friendly types."""
    record = _cropper(spec_json, options)(_item(row))
    crops = record.crops.numpy()
    boxes = [[b.x, b.y, b.size] for b in record.boxes]
    return {
        **row,
        "status": record.status,
        "error": record.error,
        "boxes": json.dumps(boxes),
        "scores": json.dumps(record.scores),
        "crops": crops.tobytes(),
        "faces": len(crops),
        "width": record.width or 0,
        "height": record.height or 0,
    }


class _KeypointActor:
    """Ray actor: loads the model once, turns a batch of cropped records into output rows."""

    def __init__(self, weights: str, device: str, points: str, options: PredictOptions, runtime: str = "auto"):
        self.predictor = Predictor.load(weights, device, runtime)
        self.layout = RowLayout(self.predictor.spec.keypoints, points)
        self.options = options  # e.g. --unsure-score: which detections are faces

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        size = self.predictor.spec.input_size
        crops = torch.from_numpy(
            np.frombuffer(b"".join(batch["crops"]), dtype=np.uint8).reshape(-1, 1, size, size).copy()
        )
        records = [
            CropRecord(
                status=r.status,
                error=r.error,
                width=r.width or None,
                height=r.height or None,
                boxes=[Box(*b) for b in json.loads(r.boxes)],
                scores=json.loads(r.scores),
            )
            for r in batch.itertuples()
        ]
        items = [_item(r) for r in batch[["path", "name", "skip", "relative"]].to_dict("records")]
        rows = [
            row
            for result in self.predictor.results(crops, records, items, self.options)
            if result.status != "skipped"
            for row in self.layout.rows(result)
        ]
        frame = pd.DataFrame(rows, columns=self.layout.columns)
        text = ["image", "status", "error"]
        numbers = [c for c in self.layout.columns if c not in text]
        frame[numbers] = (
            frame[numbers].apply(pd.to_numeric, errors="coerce").astype("float64")
        )  # "" -> NaN: one Arrow type per column
        return frame.astype({c: str for c in text})


def run_ray(
    paths: list[Path],
    out_dir: Path,
    *,
    weights: Path | None = None,
    options: PredictOptions | None = None,
    fmt: str = "csv",
    points: str = "15",
    recursive: bool = True,
    from_list: str | None = None,
    address: str | None = None,
    num_gpus: float = 0.0,
    concurrency: int = 1,
    device: str = "auto",
    runtime: str = "auto",
) -> int:
    """Run predict on a Ray cluster (``address``; None = a local instance); returns the image count."""
    try:
        import ray
    except ImportError:
        raise UsageError("--engine ray needs Ray; install it with: pip install 'fkpbatch[ray]'") from None
    if fmt not in RAY_FORMATS:
        raise UsageError(f"--engine ray writes {', '.join(RAY_FORMATS)} shards, not {fmt!r}")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise UsageError(f"{out_dir} is not empty; Ray writes its shards into a new or empty folder")
    options = options or PredictOptions()
    weights = resolve_weights(weights)
    runtime = Runtime.parse(runtime, "--runtime")
    if runtime == "onnxruntime" and (num_gpus or device not in ("auto", "cpu")):
        raise UsageError("--runtime onnxruntime runs on the CPU; use --device cpu and no --num-gpus")
    _, model_spec = load_model(weights)  # checked here, once: the actors would each fail alike
    if points == "68" and not has_ibug68(model_spec.keypoints):
        raise UsageError("--points 68: these weights predict the 15 Kaggle points only")
    spec = model_spec.to_dict()
    files = discover(list(paths), recursive=recursive, from_list=from_list).files
    if not files:
        return 0
    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=False, include_dashboard=False)
    rows = [
        {
            "path": os.fsencode(f.path),
            "name": f.name,
            "skip": f.skip_if_not_image,
            "relative": f.relative,
            "error": f.error,
            "skip_reason": f.skip_reason,
        }
        for f in files
    ]
    # Ray annotates map's fn as taking the row alone; fn_kwargs passes _crop its other arguments
    dataset = ray.data.from_items(rows).map(
        _crop,  # type: ignore[arg-type]
        fn_kwargs={"spec_json": json.dumps(spec), "options": options},
    )
    dataset = dataset.map_batches(
        _KeypointActor,
        fn_constructor_kwargs={
            "weights": str(weights.resolve()),
            "device": "cuda" if num_gpus else device,
            "points": points,
            "options": options,
            "runtime": runtime,
        },
        batch_size=options.batch_size,
        batch_format="pandas",
        compute=ray.data.ActorPoolStrategy(size=max(1, concurrency)),
        num_gpus=num_gpus,
    )
    out = str(out_dir.resolve())
    {"csv": dataset.write_csv, "jsonl": dataset.write_json, "parquet": dataset.write_parquet}[fmt](out)
    return len(files)
