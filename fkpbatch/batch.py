"""A whole ``predict`` run: discover inputs, guard outputs, stream results to a writer and to
annotated images, resume after a kill, and count what happened. The CLI only parses options."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .annotate import draw_result
from .discover import InputFile, discover
from .engine import Predictor, PredictOptions
from .errors import UsageError
from .keypoints import IBUG_POINTS, points_for
from .writers import ResultWriter, done_images, infer_format


@dataclass(frozen=True)
class BatchRequest:
    paths: tuple[Path, ...]
    out: str = "-"
    fmt: str | None = None
    points: str = "15"
    recursive: bool = True
    from_list: str | None = None
    annotate: Path | None = None
    overwrite: bool = False
    resume: bool = False


@dataclass
class Summary:
    images: int = 0
    faces: int = 0
    no_face: int = 0
    errors: int = 0
    skipped: int = 0
    resumed: int = 0
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        done = f", {self.resumed} already done (resumed)" if self.resumed else ""
        return (f"{self.images} images, {self.faces} faces, {self.no_face} without a face, {self.errors} errors, "
                f"{self.skipped} skipped (not images or hidden){done}; {self.rate:.1f} images/s")


def _check_output(request: BatchRequest, fmt: str, inputs: list[InputFile]) -> set[str]:
    """Refuse to clobber: an existing output needs --overwrite or --resume; never an input file."""
    if request.out == "-":
        if request.resume:
            raise UsageError("--resume needs an output file (-o FILE)")
        return set()
    out = Path(request.out)
    if os.path.realpath(out) in {os.path.realpath(f.path) for f in inputs}:  # realpath: a symlink loop is no error
        raise UsageError(f"{out} is one of the input files; choose another output")
    if out.is_dir():
        raise UsageError(f"{out} is a folder; -o takes a file name")
    if request.resume:
        return done_images(out, fmt)
    if out.exists() and not request.overwrite:
        raise UsageError(f"{out} exists; pass --overwrite to replace it or --resume to continue it")
    return set()


def run_batch(
    predictor: Predictor,
    request: BatchRequest,
    options: PredictOptions,
    *,
    on_start: Callable[[int], None] | None = None,
    on_batch: Callable[[int], None] | None = None,
    shard: tuple[int, int] | None = None,
) -> Summary:
    """Run a whole prediction; ``on_start(total)`` and ``on_batch(n_done)`` drive a progress bar."""
    if request.points == "68" and not set(IBUG_POINTS) <= set(predictor.spec.keypoints):
        raise UsageError("--points 68: these weights predict the 15 Kaggle points only")
    fmt = infer_format(request.out, request.fmt)
    found = discover(list(request.paths), recursive=request.recursive, from_list=request.from_list)
    files = found.files
    if shard is not None:
        from .shard import select_shard

        files = select_shard(files, *shard)
    done = _check_output(request, fmt, files)
    todo = [f for f in files if f.name not in done]
    summary = Summary(skipped=found.hidden, resumed=len(files) - len(todo))
    if request.annotate is not None:
        request.annotate.mkdir(parents=True, exist_ok=True)
    if on_start:
        on_start(len(todo))
    drawn = set(points_for(request.points))
    started = time.perf_counter()
    pending = []
    with ResultWriter(request.out, fmt, predictor.spec.keypoints, request.points, append=request.resume) as writer:
        try:
            for result in predictor.predict_paths(todo, options):
                pending.append(result)
                _count(summary, result)
                if request.annotate is not None and result.faces:
                    warning = draw_result(result, predictor.spec.keypoints, request.annotate, drawn)
                    if warning:
                        summary.warnings.append(warning)
                if len(pending) >= options.batch_size:
                    writer.write(pending)
                    if on_batch:
                        on_batch(len(pending))
                    pending = []
        finally:  # Ctrl-C or an error: what was predicted is still written, as whole rows
            writer.write(pending)
            summary.seconds = time.perf_counter() - started
    if on_batch:
        on_batch(len(pending))
    return summary


def _count(summary: Summary, result) -> None:
    if result.status == "skipped":
        summary.skipped += 1
        return
    summary.images += 1
    summary.faces += len(result.faces)
    summary.no_face += result.status == "no_face"
    summary.errors += result.status == "error"
