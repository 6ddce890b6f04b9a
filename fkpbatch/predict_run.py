"""A whole ``predict`` run: discover inputs, guard outputs, stream results to a writer and to
annotated images, resume after a kill, and count what happened. The CLI only parses options."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from . import interrupts
from .annotate import ContactSheet, draw_result
from .discover import discover
from .engine import Predictor
from .errors import OutputError, UsageError
from .keypoints import has_ibug68, points_for
from .options import PredictOptions
from .results import columns_for
from .resume import (
    Existing,
    InputIdentities,
    OutputLock,
    check_folder,
    model_fingerprint,
    open_existing,
    write_sidecar,
)
from .writers import ResultWriter, infer_format


@dataclass(frozen=True)
class PredictRequest:
    paths: tuple[Path, ...]
    out: str = "-"
    fmt: str | None = None
    points: str = "15"
    recursive: bool = True
    from_list: str | None = None
    annotate: Path | None = None
    aligned: Path | None = None  # a folder for aligned face crops (fkpbatch.align)
    aligned_size: int = 112
    overwrite: bool = False
    resume: bool = False
    raw_names: bool = False  # CSV text cells as they are, not spreadsheet-safe


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
        return (
            f"{self.images} images, {self.faces} faces, {self.no_face} without a face, {self.errors} errors, "
            f"{self.skipped} skipped (not images or hidden){done}; {self.rate:.1f} images/s"
        )


def run_parameters(
    predictor: Predictor, request: PredictRequest, options: PredictOptions, fmt: str, shard: tuple[int, int] | None
) -> dict:
    """Everything that changes what an output holds: a resumed run must use the same values."""
    return {
        "format": fmt,
        "points": request.points,
        "model": model_fingerprint(predictor.model, predictor.spec),
        "detect": options.detect,
        "faces": options.faces,
        "min_score": options.min_score,
        "min_face": options.min_face,
        "max_pixels": options.max_pixels,
        "passes": str(options.passes),
        "unsure_score": options.unsure_score,
        "unsure_quality": options.unsure_quality,
        "raw_names": request.raw_names and fmt == "csv",
        "shard": f"{shard[0]}/{shard[1]}" if shard else None,
    }


def _open_output(
    request: PredictRequest,
    fmt: str,
    params: dict,
    columns: list[str],
    inputs: InputIdentities,
    stack: ExitStack,
    summary_warnings: list[str],
) -> Existing | None:
    """Lock the output, then check it (nothing is changed before every check passed): an existing
    file needs --overwrite (never an input) or --resume (never a foreign or different file)."""
    out = Path(request.out)
    check_folder(out)
    lock = stack.enter_context(OutputLock(out))
    if lock.warning:
        summary_warnings.append(lock.warning)
    existing = None
    if request.resume:
        existing = open_existing(out, fmt, params, columns, inputs, safe=not request.raw_names)
    elif os.path.lexists(out):
        if not request.overwrite:
            raise UsageError(f"{out} exists; pass --overwrite to replace it or --resume to continue it")
        try:
            if os.stat(out) in inputs:
                raise OutputError(f"{out} is one of the input files; choose another output")
        except FileNotFoundError:
            pass  # a dangling link: replaced, never followed
    write_sidecar(out, params, columns, None)  # "being written": a kill from here on is repaired by --resume
    return existing


def run_predict(
    predictor: Predictor,
    request: PredictRequest,
    options: PredictOptions,
    *,
    on_start: Callable[[int], None] | None = None,
    on_batch: Callable[[int], None] | None = None,
    shard: tuple[int, int] | None = None,
) -> Summary:
    """Run a whole prediction; ``on_start(total)`` and ``on_batch(n_done)`` drive a progress bar.

    Ctrl-C and SIGTERM (see :mod:`fkpbatch.interrupts`) stop it between whole batches; what was
    predicted is written first, and the output stays one that ``--resume`` continues."""
    if request.points == "68" and not has_ibug68(predictor.spec.keypoints):
        raise UsageError("--points 68: these weights predict the 15 Kaggle points only")
    fmt = infer_format(request.out, request.fmt)
    if request.resume and request.overwrite:
        raise UsageError("--resume continues -o FILE and --overwrite replaces it: give one of them")
    if request.resume and request.out == "-":
        raise UsageError("--resume needs an output file (-o FILE)")
    found = discover(list(request.paths), recursive=request.recursive, from_list=request.from_list)
    files = found.files
    if shard is not None:
        from .shard import select_shard

        files = select_shard(files, *shard)
    inputs = InputIdentities([f.path for f in files])
    columns = columns_for(predictor.spec.keypoints, request.points)
    summary = Summary(skipped=found.hidden)
    with ExitStack() as stack:
        existing, params = None, None
        if request.out != "-":
            params = run_parameters(predictor, request, options, fmt, shard)
            existing = _open_output(request, fmt, params, columns, inputs, stack, summary.warnings)
        done = existing.done if existing else set()
        todo = [f for f in files if f.name not in done]
        summary.resumed = len(files) - len(todo)
        if existing and existing.dropped and existing.dropped not in {f.name for f in todo}:
            summary.warnings.append(
                f"{existing.dropped}: its rows ended the output of a run that was stopped, maybe "
                "incomplete, so they were removed; it is not among this run's inputs"
            )
        if request.annotate is not None:
            request.annotate.mkdir(parents=True, exist_ok=True)
        sheet = ContactSheet() if request.annotate is not None else None
        if on_start:
            on_start(len(todo))
        drawn = set(points_for(request.points))
        started = time.perf_counter()
        writer = ResultWriter(
            request.out,
            fmt,
            predictor.spec.keypoints,
            request.points,
            overwrite=request.overwrite,
            resume_fd=existing.fd if existing else None,
            keep=existing.keep if existing else 0,
            objects=existing.objects if existing else None,
            safe=not request.raw_names,
        )
        pending: list = []
        try:
            try:
                for result in predictor.predict_paths(todo, options):
                    pending.append(result)
                    _count(summary, result)
                    if request.annotate is not None and result.faces:
                        warning = draw_result(
                            result,
                            predictor.spec.keypoints,
                            request.annotate,
                            drawn,
                            sheet=sheet,
                            overwrite=request.overwrite,
                            inputs=inputs,
                            quiet_if_exists=request.resume,
                            max_pixels=options.max_pixels,
                        )
                        if warning:
                            summary.warnings.append(warning)
                    if len(pending) >= options.batch_size:
                        batch, pending = pending, []  # a signal after this line cannot write the batch twice
                        writer.write(batch)
                        if on_batch:
                            on_batch(len(batch))
            except Exception:
                stop = interrupts.terminated()
                if stop is not None:  # e.g. DataLoader workers killed by the same signal
                    raise stop from None
                raise
            finally:  # Ctrl-C, SIGTERM or an error: what was predicted is still written, as whole images
                batch, pending = pending, []
                writer.write(batch)
                summary.seconds = time.perf_counter() - started
        finally:
            writer.close()
            if params is not None and fmt != "json" and writer.clean:
                write_sidecar(Path(request.out), params, columns, writer.committed)
    if on_batch:
        on_batch(len(batch))
    if sheet is not None:
        summary.warnings.extend(sheet.save(request.annotate, inputs=[f.path for f in files]))
    return summary


def _count(summary: Summary, result) -> None:
    if result.status == "skipped":
        summary.skipped += 1
        return
    summary.images += 1
    summary.faces += len(result.faces)
    summary.no_face += result.status == "no_face"
    summary.errors += result.status == "error"
