"""A whole ``predict`` run: discover inputs, guard outputs, stream results to a writer and to
annotated images, resume after a kill, and count what happened. The CLI only parses options."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from . import interrupts
from .annotate import ContactSheet, draw_result, write_aligned
from .discover import discover
from .engine import Predictor
from .errors import OutputError, UsageError
from .fileio import stream_kind, system_link
from .keypoints import has_ibug68, points_for
from .options import PredictOptions
from .results import columns_for
from .resume import (
    Existing,
    InputIdentities,
    Matched,
    OutputLock,
    check_folder,
    drop_rows,
    lock_path,
    match_rows,
    model_fingerprint,
    open_existing,
    sidecar_path,
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
    retried: int = 0  # --resume: images whose earlier rows said error, predicted again
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        done = f", {self.resumed} already done (resumed)" if self.resumed else ""
        done += f", {self.retried} retried (failed before)" if self.retried else ""
        return (
            f"{self.images} images, {self.faces} faces, {self.no_face} without a face, {self.errors} errors, "
            f"{self.skipped} skipped (not images or hidden){done}; {self.rate:.1f} images/s"
        )


def without_own_outputs(files: list, request: PredictRequest) -> list:
    """The inputs less what this run writes, where a folder walk found it: the output, its sidecar
    and lock, and everything under the --annotate and --aligned folders (so an output inside an input
    folder is never read back in, by this run or by --resume) unless such a folder is itself an
    input, or inside one given. A file named as an input stays one (and is never overwritten)."""
    roots = [os.path.realpath(p) for p in request.paths]
    folders = [
        folder
        for folder in (os.path.realpath(d) for d in (request.annotate, request.aligned) if d is not None)
        if not any(root == folder or Path(root).is_relative_to(folder) for root in roots)
    ]
    own = set()
    if request.out != "-":
        out = Path(request.out)
        own = {os.path.realpath(p) for p in (out, sidecar_path(out), lock_path(out))}
    if not folders and not own:
        return files
    return [
        file
        for file in files
        if file.given
        or ((real := os.path.realpath(file.path)) not in own and not any(Path(real).is_relative_to(f) for f in folders))
    ]


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
        "pose": options.pose,
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
    files: list,
) -> tuple[Existing | None, Matched | None]:
    """Lock the output, then check it (nothing is changed before every check passed): an existing
    file needs --overwrite (never an input) or --resume (never a foreign or different file, and
    its rows must be matched to this run's ``files``: :func:`match_rows`)."""
    out = Path(request.out)
    check_folder(out)
    lock = stack.enter_context(OutputLock(out))
    if lock.warning:
        summary_warnings.append(lock.warning)
    existing, matched = None, None
    if request.resume:
        existing = open_existing(out, fmt, params, columns, inputs, safe=not request.raw_names)
    if existing is not None:
        try:
            matched = match_rows(existing, files, out)
        except BaseException:
            if existing.fd is not None:
                os.close(existing.fd)
            raise
    elif not request.resume and os.path.lexists(out):
        if not request.overwrite:
            raise UsageError(f"{out} exists; pass --overwrite to replace it or --resume to continue it")
        try:
            if os.stat(out) in inputs:
                raise OutputError(f"{out} is one of the input files; choose another output")
        except FileNotFoundError:
            pass  # a dangling link: replaced, never followed
    write_sidecar(out, params, columns, None)  # "being written": a kill from here on is repaired by --resume
    return existing, matched


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
    predicted is written first, and the output stays one that ``--resume`` continues. A FIFO or a
    device as ``out`` is written into like standard output: no lock, no sidecar, no --resume."""
    if request.points == "68" and not has_ibug68(predictor.spec.keypoints):
        raise UsageError("--points 68: these weights predict the 15 Kaggle points only")
    fmt = infer_format(request.out, request.fmt)
    if request.resume and request.overwrite:
        raise UsageError("--resume continues -o FILE and --overwrite replaces it: give one of them")
    if request.resume and request.out == "-":
        raise UsageError("--resume needs an output file (-o FILE)")
    stream = request.out != "-" and stream_kind(request.out)
    if request.resume and stream:
        raise UsageError(f"--resume continues a file; {request.out} is {stream}, written as a stream like stdout")
    if request.out != "-" and not stream and system_link(request.out):  # /dev/stdout when stdout is a file
        raise OutputError(f"{request.out} leads to a regular file through a system link; give that file's own name")
    if request.out == "-" and sys.stdout is None:
        raise OutputError("standard output is closed; give -o FILE")
    found = discover(list(request.paths), recursive=request.recursive, from_list=request.from_list)
    files = without_own_outputs(found.files, request)
    if shard is not None:
        from .shard import select_shard

        files = select_shard(files, *shard)
    inputs = InputIdentities([f.path for f in files])
    columns = columns_for(predictor.spec.keypoints, request.points, options.pose)
    summary = Summary(skipped=found.hidden)
    with ExitStack() as stack:
        existing, matched, params = None, None, None
        if request.out != "-" and not stream:
            params = run_parameters(predictor, request, options, fmt, shard)
            existing, matched = _open_output(request, fmt, params, columns, inputs, stack, summary.warnings, files)
        if existing is not None and matched is not None:
            drop_rows(Path(request.out), existing, matched.drop)  # failed before: predicted again
        done = matched.done if matched else set()
        todo = [f for f in files if f.name not in done]
        summary.resumed = len(done)
        summary.retried = len(matched.retried) if matched else 0
        if matched is not None and not matched.dropped_is_input:
            summary.warnings.append(
                f"{existing.dropped}: its rows ended the output of a run that was stopped, maybe "
                "incomplete, so they were removed; it is not among this run's inputs"
            )
        pictures = _Pictures(request, predictor.spec.keypoints, inputs, options.max_pixels)
        if on_start:
            on_start(len(todo))
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
            pose=options.pose,
        )
        pending: list = []
        try:
            try:
                for result in predictor.predict_paths(todo, options):
                    pending.append(result)
                    _count(summary, result)
                    if result.faces:
                        summary.warnings += pictures.write(result)
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
    if pictures.sheet is not None:
        summary.warnings.extend(pictures.sheet.save(request.annotate, inputs=[f.path for f in files]))
    return summary


class _Pictures:
    """The pictures a run writes beside its output: annotated copies and the contact sheet
    (--annotate), aligned faces (--aligned)."""

    def __init__(self, request: PredictRequest, keypoints: tuple[str, ...], inputs, max_pixels: int):
        self.request, self.keypoints, self.inputs, self.max_pixels = request, keypoints, inputs, max_pixels
        self.drawn = set(points_for(request.points))
        self.sheet = ContactSheet() if request.annotate is not None else None
        self.aligned: set[Path] = set()
        for folder in (request.annotate, request.aligned):
            if folder is not None:
                folder.mkdir(parents=True, exist_ok=True)

    def write(self, result) -> list[str]:
        """Warnings (never an exception) from writing ``result``'s pictures."""
        request = self.request
        common = dict(
            overwrite=request.overwrite, inputs=self.inputs, quiet_if_exists=request.resume, max_pixels=self.max_pixels
        )
        warnings = []
        if request.annotate is not None:
            warning = draw_result(result, self.keypoints, request.annotate, self.drawn, sheet=self.sheet, **common)
            warnings += [warning] if warning else []
        if request.aligned is not None:
            warnings += write_aligned(result, request.aligned, request.aligned_size, written=self.aligned, **common)
        return warnings


def _count(summary: Summary, result) -> None:
    if result.status == "skipped":
        summary.skipped += 1
        return
    summary.images += 1
    summary.faces += len(result.faces)
    summary.no_face += result.status == "no_face"
    summary.errors += result.status == "error"
