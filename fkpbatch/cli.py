"""Thin Typer commands: parse options, call library functions, turn FkpError into one line + exit code."""

from __future__ import annotations

import errno
import json
import os
import signal
import sys
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from . import __version__, interrupts
from .config import TrainConfig, recipe_values
from .errors import FkpError, PipeClosed
from .options import (
    Augment,
    Detect,
    DetectOn,
    Device,
    Engine,
    Faces,
    Format,
    Model,
    Passes,
    Points,
    PredictOptions,
    Recipe,
    Runtime,
    option_help,
    predict_options,
)
from .progress import STDERR
from .zoo import DEFAULT_MODEL, SHIPPED_MODELS, resolve_weights

app = typer.Typer(
    help="Facial keypoints for large batches of face images: predict, train, evaluate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# soft_wrap: a log (stderr not a terminal) gets whole lines, not lines folded at 80 columns. STDERR:
# a message that cannot be written (2>/dev/full, a full disk under 2> log.txt) is dropped, never fatal.
err = Console(file=STDERR, soft_wrap=True)

# Options shared by several commands, declared once.
WeightsOption = Annotated[
    Optional[Path], typer.Option("--weights", "-w", help="Your checkpoint from 'fkpbatch train' (instead of --model).")
]
ModelOption = Annotated[
    Optional[Model],
    typer.Option(
        help=f"Shipped model (default {DEFAULT_MODEL}; see 'fkpbatch models'). Not with --weights.", show_default=False
    ),
]
DeviceOption = Annotated[Device, typer.Option(help="auto = CUDA if available, else MPS, else CPU.")]
RuntimeOption = Annotated[Runtime, typer.Option(help="auto = onnxruntime on the CPU, PyTorch on a GPU.")]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="Nothing on stderr but errors.")]
VerboseOption = Annotated[bool, typer.Option("--verbose", "-v", help="More detail on stderr (settings, all warnings).")]
DetectOption = Annotated[Detect, typer.Option(help=option_help("detect"))]


def _value(choice):
    """An option Enum as its plain string (for configs saved in checkpoints), None as None."""
    return None if choice is None else choice.value


@contextmanager
def _clean_errors():
    """One line on stderr and the error's exit code instead of a traceback."""
    try:
        yield
    except PipeClosed as exc:  # the reader went away (| head): a normal end, without a word
        if exc.stdout:
            _stdout_to_devnull()
        raise typer.Exit(exc.exit_code) from None
    except FkpError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(exc.exit_code) from None
    except OSError as exc:  # the environment: a missing folder, a read-only or full disk, a closed pipe
        where = f": {exc.filename}" if exc.filename else ""
        err.print(f"[red]error:[/red] {exc.strerror or exc}{where}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


def _stdout_to_devnull() -> None:
    """After a closed pipe: what is still buffered for stdout goes to /dev/null, so that the flush
    at exit neither fails nor prints "Exception ignored ... BrokenPipeError" (as the Python docs
    on SIGPIPE recommend)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.__stdout__.fileno())
        os.close(devnull)
    except (AttributeError, OSError, ValueError):
        pass


class _Stdout:
    """``sys.stdout`` for the console script: a write that finds the pipe closed raises
    :class:`PipeClosed` (not an OSError, which click would turn into exit 1)."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text):
        try:
            return self._stream.write(text)
        except OSError as exc:
            if exc.errno == errno.EPIPE:
                raise PipeClosed() from None
            raise

    def flush(self):
        try:
            self._stream.flush()
        except OSError as exc:
            if exc.errno == errno.EPIPE:
                raise PipeClosed() from None
            raise

    def __getattr__(self, name):
        return getattr(self._stream, name)


def _standard_fds() -> None:
    """Started with stdin, stdout or stderr closed (``>&-``): /dev/null takes its number, so that no
    file this process opens gets fd 1 or 2 and receives what a library prints there. ``sys.stdout``
    stays None: predict then refuses to write its rows nowhere."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError as exc:
            if exc.errno != errno.EBADF:
                continue
            try:
                opened = os.open(os.devnull, os.O_RDWR)
                if opened != fd:
                    os.dup2(opened, fd)
                    os.close(opened)
            except OSError:
                pass


def _version(value: bool):
    if value:
        default = SHIPPED_MODELS[DEFAULT_MODEL]
        typer.echo(f"fkpbatch {__version__} (default model: {default.name} = {default.file}, {default.input_size} px)")
        raise typer.Exit()


def _say(message: str) -> None:
    """A plain line on stderr: no markup, never wrapped."""
    err.print(message, highlight=False, markup=False, soft_wrap=True)


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
):
    """fkpbatch: facial keypoints for folders of face photos."""


def _predict_option(name: str, *flags: str, **kwargs):
    """A ``predict`` option whose help text is PredictOptions' (fkpbatch/options.py)."""
    return typer.Option(*flags, help=option_help(name), **kwargs)


@app.command()
def predict(
    paths: Annotated[
        Optional[list[Path]],
        typer.Argument(help="Image files and folders (folders are walked recursively).", show_default=False),
    ] = None,
    out: Annotated[str, typer.Option("--out", "-o", help="Output file; '-' = stdout.")] = "-",
    fmt: Annotated[
        Optional[Format],
        typer.Option(
            "--format", "-f", help="Default: from the -o extension; CSV on stdout. parquet: --engine ray only."
        ),
    ] = None,
    from_list: Annotated[
        Optional[str],
        typer.Option(help="File naming one input per line, or NUL-separated (find -print0); '-' = stdin."),
    ] = None,
    recursive: Annotated[bool, typer.Option(help="Walk folders recursively.")] = True,
    model: ModelOption = None,
    weights: WeightsOption = None,
    device: DeviceOption = Device.auto,
    runtime: RuntimeOption = Runtime.auto,
    batch_size: Annotated[int, _predict_option("batch_size", "--batch-size", "-b", min=1)] = PredictOptions.batch_size,
    workers: Annotated[Optional[int], _predict_option("workers", min=0)] = None,
    detect: DetectOption = PredictOptions.detect,
    faces: Annotated[Faces, _predict_option("faces")] = PredictOptions.faces,
    min_score: Annotated[float, _predict_option("min_score", min=0.0, max=1.0)] = PredictOptions.min_score,
    min_face: Annotated[int, _predict_option("min_face", min=0)] = PredictOptions.min_face,
    passes: Annotated[Passes, _predict_option("passes")] = PredictOptions.passes,
    detect_on: Annotated[DetectOn, _predict_option("detect_on")] = PredictOptions.detect_on,
    unsure_score: Annotated[float, _predict_option("unsure_score", min=0.0, max=1.0)] = PredictOptions.unsure_score,
    unsure_quality: Annotated[
        float, _predict_option("unsure_quality", min=0.0, max=1.0, hidden=True)
    ] = PredictOptions.unsure_quality,
    max_pixels: Annotated[int, _predict_option("max_pixels", min=1)] = PredictOptions.max_pixels,
    pose: Annotated[bool, _predict_option("pose")] = PredictOptions.pose,
    points: Annotated[
        Points, typer.Option(help="15 = the Kaggle keypoints; 68 adds the iBUG p0_x..p67_y columns.")
    ] = Points.kaggle15,
    annotate: Annotated[
        Optional[Path], typer.Option(help="Write annotated copies of the images under this folder.")
    ] = None,
    aligned: Annotated[
        Optional[Path],
        typer.Option(help="Write each face, aligned (ArcFace's five-point template), as a PNG under this folder."),
    ] = None,
    aligned_size: Annotated[int, typer.Option(help="Side of the --aligned crops in pixels.", min=16)] = 112,
    overwrite: Annotated[
        bool, typer.Option(help="Replace an existing output file (and existing annotated or aligned images).")
    ] = False,
    resume: Annotated[
        bool,
        typer.Option(
            help="Continue an interrupted run with the same options: skip images already in -o FILE (retrying "
            "those that failed), append the rest."
        ),
    ] = False,
    raw_names: Annotated[
        bool,
        typer.Option(
            help="CSV: write text cells as they are; by default a cell starting with = + - @ ' tab or CR gets a leading ' so spreadsheets never run it as a formula."
        ),
    ] = False,
    shard: Annotated[
        Optional[str], typer.Option(help="K/N: process only shard K (0-based) of N, for job arrays.")
    ] = None,
    strict: Annotated[bool, typer.Option(help="Exit 1 if any file failed.")] = False,
    engine: Annotated[Engine, typer.Option(help="ray = a Ray Data job; -o is then a folder of shards.")] = Engine.local,
    ray_address: Annotated[
        Optional[str], typer.Option(help="Ray cluster address (default: start a local Ray).")
    ] = None,
    num_gpus: Annotated[float, typer.Option(help="With --engine ray: GPUs per keypoint actor.", min=0.0)] = 0.0,
    concurrency: Annotated[
        int,
        typer.Option(
            help="With --engine ray: keypoint model actors (decoding runs as Ray tasks on the other CPUs).", min=1
        ),
    ] = 1,
    quiet: QuietOption = False,
    verbose: VerboseOption = False,
):
    """Find facial keypoints in images and write one row per face (CSV on stdout by default)."""
    from .predict_run import PredictRequest
    from .shard import parse_shard

    with _clean_errors():
        request = PredictRequest(
            paths=tuple(paths or ()),
            out=out,
            fmt=fmt,
            points=points,
            recursive=recursive,
            from_list=from_list,
            annotate=annotate,
            aligned=aligned,
            aligned_size=aligned_size,
            overwrite=overwrite,
            resume=resume,
            raw_names=raw_names,
        )
        options = predict_options(locals())
        shard_spec = parse_shard(shard) if shard else None
        weights = resolve_weights(weights, model)
        _check_engine_options(engine, locals())
        if engine == Engine.ray:
            _predict_with_ray(request, options, weights, device, runtime, ray_address, num_gpus, concurrency, quiet)
            return
        summary = _predict_here(request, options, weights, device, runtime, shard_spec, quiet=quiet, verbose=verbose)
    _report(summary, quiet=quiet, verbose=verbose, strict=strict)


def _predict_here(request, options, weights, device, runtime, shard, *, quiet: bool, verbose: bool):
    """The local engine under the CLI's signal handling: Ctrl-C, SIGTERM and SIGHUP stop between
    whole batches, say how to resume, and exit 128 + the signal's number."""
    import torch

    from .engine import Predictor
    from .options import cpu_count
    from .predict_run import run_predict
    from .progress import progress_for

    torch.set_num_threads(cpu_count())  # a process setting: the CLI's to make, never the library's
    try:
        with interrupts.handled():
            predictor = Predictor.load(weights, device, runtime)
            if verbose and not quiet:
                _say(_settings_line(predictor, weights, options))
            progress = progress_for("predict", quiet=quiet, terminal=err.is_terminal, console=err)
            with progress:
                return run_predict(
                    predictor, request, options, shard=shard, on_start=progress.start, on_batch=progress.advance
                )
    except KeyboardInterrupt as exc:
        signum = exc.signum if isinstance(exc, interrupts.Terminated) else signal.SIGINT
        what = "interrupted" if signum == signal.SIGINT else f"terminated ({signal.Signals(signum).name})"
        _interrupted_hint(what, request.out)
        raise typer.Exit(128 + signum) from None


def _settings_line(predictor, weights, options: PredictOptions) -> str:
    spec = predictor.spec
    runner = "onnxruntime" if predictor.onnx is not None else "PyTorch"
    return (
        f"model {weights} ({spec.arch}, {len(spec.keypoints)} points, {spec.input_size} px) "
        f"on {predictor.device} in {runner}; batch {options.batch_size}, {options.workers} workers, "
        f"--detect {options.detect}"
        + (f", detection on {predictor.device}" if predictor.detects_on_device(options) else "")
    )


def _report(summary, *, quiet: bool, verbose: bool, strict: bool) -> None:
    """Warnings and the summary line on stderr; exit 1 when every image failed, or any with --strict."""
    if not quiet:
        shown = summary.warnings if verbose else summary.warnings[:20]
        for warning in shown:
            _say(f"warning: {warning}")
        if len(shown) < len(summary.warnings):
            _say(f"... and {len(summary.warnings) - len(shown)} more warnings (-v shows all)")
        _say(summary.line())
    if summary.images and summary.errors == summary.images:  # nothing usable: a broken install, not bad photos
        err.print(
            f"[red]error:[/red] every image failed ({summary.errors}); the error column says why", highlight=False
        )
        raise typer.Exit(1)
    if strict and summary.errors:
        raise typer.Exit(1)


def _interrupted_hint(what: str, out: str) -> None:
    """How to continue after Ctrl-C or SIGTERM; the output holds whole images only."""
    import shlex

    from .fileio import stream_kind

    if out == "-" or stream_kind(out):
        where = "stdout" if out == "-" else out
        err.print(
            f"{what}; the rows written to {where} are whole images. A stream cannot be continued: "
            "run again, or write to a file with -o FILE, which --resume continues",
            highlight=False,
            markup=False,
        )
        return
    err.print(
        f"{what}; {out} holds whole images only. Continue with the same command plus --resume "
        f"(and without --overwrite): fkpbatch predict ... -o {shlex.quote(out)} --resume",
        highlight=False,
    )


def _check_engine_options(engine: str, given: dict) -> None:
    """Options one engine does not implement are refused (exit 2), never silently ignored."""
    if engine == "ray":
        unsupported = {
            "--annotate": given["annotate"] is not None,
            "--aligned": given["aligned"] is not None,
            "--pose": given["pose"],
            "--resume": given["resume"],
            "--shard": given["shard"] is not None,
            "--strict": given["strict"],
            "--overwrite": given["overwrite"],
            "--workers": given["workers"] is not None,
            "--detect-on device": given["detect_on"] == "device",
            "--raw-names": given["raw_names"],  # Ray's shards are for pipelines: names as they are
        }
        hint = "; Ray writes a new folder of shards, decodes in Ray tasks, and its rows carry each file's status"
    else:
        unsupported = {
            "--ray-address": given["ray_address"] is not None,
            "--num-gpus": given["num_gpus"] != 0,
            "--concurrency": given["concurrency"] != 1,
        }
        hint = " (they apply to --engine ray)"
    refused = [name for name, used in unsupported.items() if used]
    if refused:
        raise FkpError(f"--engine {engine} does not support {', '.join(refused)}{hint}")


def _predict_with_ray(request, options, weights, device, runtime, address, num_gpus, concurrency, quiet) -> None:
    from .ray_engine import run_ray

    if request.out == "-":
        raise FkpError("--engine ray writes shards into a folder: give -o DIR")
    count = run_ray(
        list(request.paths),
        Path(request.out),
        weights=weights,
        options=options,
        fmt=request.fmt or "csv",
        points=request.points,
        recursive=request.recursive,
        from_list=request.from_list,
        address=address,
        num_gpus=num_gpus,
        concurrency=concurrency,
        device=str(device),
        runtime=str(runtime),
    )
    if not quiet:
        err.print(f"{count} input files processed by Ray; shards in {request.out}", highlight=False)


@app.command()
def train(
    data: Annotated[
        Optional[list[Path]],
        typer.Argument(
            help="Kaggle training.csv and/or folder CSVs (image + keypoint columns, images beside it).",
            show_default=False,
        ),
    ] = None,
    recipe: Annotated[
        Optional[Recipe],
        typer.Option(
            help="seed = the Kaggle notebook's (seed net, MSE, Adam 1e-3, flip+brightness); fkpnet = the shipped models' (heatmap net, L1, cosine, strong augmentation). "
            "Default: seed for Kaggle CSVs, fkpnet otherwise."
        ),
    ] = None,
    arch: Annotated[Optional[str], typer.Option(help="Architecture (see 'fkpbatch models').")] = None,
    points: Annotated[Optional[Points], typer.Option(help="Keypoints to learn (68 needs p0_x..p67_y columns).")] = None,
    epochs: Annotated[
        Optional[int],
        typer.Option(min=1, help=f"Epochs (recipe: {recipe_values('epochs')}); with --resume, the new total."),
    ] = None,
    batch_size: Annotated[
        Optional[int],
        typer.Option("--batch-size", "-b", min=1, help=f"Batch size (recipe: {recipe_values('batch_size')})."),
    ] = None,
    lr: Annotated[Optional[float], typer.Option(help=f"Adam learning rate (recipe: {recipe_values('lr')}).")] = None,
    val_split: Annotated[
        Optional[float],
        typer.Option(help=f"Fraction held out for validation (default {TrainConfig.val_split}).", min=0.0, max=0.9),
    ] = None,
    group_by: Annotated[
        Optional[str],
        typer.Option(
            help="Regex whose first group names an image's group (e.g. '^(.+)_[^_]+$' = person); groups never straddle the split."
        ),
    ] = None,
    augment: Annotated[
        Optional[Augment],
        typer.Option(help="seed = flip with left/right swap, brightness; strong = + rotation, scale, shift."),
    ] = None,
    vflip: Annotated[
        bool, typer.Option(help="Also flip vertically (teaches upside-down faces; off by default).")
    ] = False,
    input_size: Annotated[
        Optional[int],
        typer.Option(help=f"Model input side in pixels (recipe: {recipe_values('input_size')}; --init: its own)."),
    ] = None,
    framing_scale: Annotated[
        Optional[float],
        typer.Option(
            min=0.5,
            max=4.0,
            help=f"Crop side / (eye distance + eye-to-mouth distance) (recipe: {recipe_values('framing_scale')}; --init: its own).",
        ),
    ] = None,
    framing_shift: Annotated[
        Optional[float],
        typer.Option(
            min=-1.0,
            max=2.0,
            help=f"Crop centre from the eyes towards the mouth, as a fraction of that distance (recipe: {recipe_values('framing_shift')}).",
        ),
    ] = None,
    images: Annotated[
        Optional[Path], typer.Option(help="Folder of the images of folder CSVs (default: beside the CSV).")
    ] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Run folder (default runs/<timestamp>).")] = None,
    resume: Annotated[Optional[Path], typer.Option(help="Continue the run in this folder from its last.pt.")] = None,
    init: Annotated[
        Optional[Path],
        typer.Option(
            help="Fine-tune: start from these weights (a file, or a shipped model: fast, accurate) instead of random ones; its architecture, points and input size apply unless you give --arch, --points or --input-size."
        ),
    ] = None,
    label_offset: Annotated[
        Optional[list[str]],
        typer.Option(
            metavar="DX,DY",
            help="Pixels: where a CSV's labels sit relative to the pixel grid (1,1 for 1-based coordinates), once per CSV in order. Flips then keep the convention instead of blurring it.",
            show_default=False,
        ),
    ] = None,
    seed: Annotated[
        Optional[int],
        typer.Option(help=f"Random seed: splits, initialisation, augmentation (default {TrainConfig.seed})."),
    ] = None,
    device: DeviceOption = Device.auto,
    workers: Annotated[int, typer.Option(min=0, help="DataLoader workers.")] = 2,
    strict: Annotated[bool, typer.Option(help="Missing image files are an error, not a warning.")] = False,
    overwrite: Annotated[
        bool, typer.Option(help="Start a new run in an --out folder that holds one (its files are replaced).")
    ] = False,
    quiet: QuietOption = False,
    verbose: VerboseOption = False,
):
    """Train a keypoint model; writes best.pt, last.pt, metrics.jsonl/.csv, config.json and loss.png (docs/training.md)."""
    from .train import build_config, resume_training
    from .train import train as run_training

    log = (lambda message: None) if quiet else _say
    show = not quiet and err.is_terminal
    common: dict[str, Any] = dict(show_progress=show, log=log, verbose=verbose and not quiet)
    with _clean_errors():
        try:
            if resume is not None:
                given = {
                    "training CSVs": bool(data), "--recipe": recipe, "--arch": arch, "--points": points,
                    "--batch-size": batch_size, "--lr": lr, "--val-split": val_split, "--group-by": group_by,
                    "--augment": augment, "--vflip": vflip, "--input-size": input_size, "--framing-scale": framing_scale, "--framing-shift": framing_shift, "--images": images,
                    "--out": out, "--init": init, "--label-offset": label_offset, "--seed": seed,
                    "--strict": strict, "--overwrite": overwrite,
                }  # fmt: skip
                ignored = [name for name, value in given.items() if value not in (None, False, [])]
                if ignored:  # a resumed run keeps its saved configuration: say so rather than ignore them
                    raise FkpError(
                        f"--resume continues {resume} with its saved configuration; {', '.join(ignored)} cannot "
                        "change it (only --epochs, --device, --workers, -q and -v apply)"
                    )
                best = resume_training(resume, epochs=epochs, device=device.value, workers=workers, **common)
            else:
                if not data:
                    raise FkpError("give at least one training CSV (or --resume RUN_DIR)")
                config = build_config(
                    tuple(str(p) for p in data),
                    recipe=_value(recipe),
                    arch=arch,
                    points=_value(points),
                    epochs=epochs,
                    batch_size=batch_size,
                    lr=lr,
                    val_split=val_split,
                    group_by=group_by,
                    augment=_value(augment),
                    vflip=vflip,
                    input_size=input_size,
                    framing_scale=framing_scale,
                    framing_shift=framing_shift,
                    images_dir=str(images) if images else None,
                    init=str(init) if init else None,
                    label_offsets=tuple(label_offset or ()),
                    seed=seed,
                    device=device.value,
                    workers=workers,
                    strict=strict,
                )
                run_dir = out or Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")
                best = run_training(config, run_dir, overwrite=overwrite, **common)
        except KeyboardInterrupt:
            raise typer.Exit(130) from None
    log(f"best weights: {best}")


@app.command()
def evaluate(
    data: Annotated[list[Path], typer.Argument(help="Labelled data: Kaggle CSV or folder CSV.", show_default=False)],
    model: ModelOption = None,
    weights: WeightsOption = None,
    holdout: Annotated[
        Optional[Path], typer.Option(help="Training run folder: evaluate only the images it held out.")
    ] = None,
    detect: DetectOption = PredictOptions.detect,
    device: DeviceOption = Device.auto,
    workers: Annotated[Optional[int], _predict_option("workers", min=0)] = None,
    json_out: Annotated[
        Optional[Path], typer.Option("--json", help="Also write the figures to this JSON file.")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing --json file.")] = False,
):
    """RMSE (Kaggle 96-pixel units), NME (% of outer-eye-corner distance), failure rate, per keypoint."""
    from .engine import Predictor
    from .evaluate import evaluate_checkpoint
    from .fileio import check_target, write_bytes_atomic

    with _clean_errors():
        weights = resolve_weights(weights, model)
        inputs = [*data, weights, *([holdout / "config.json"] if holdout else [])]
        if json_out:
            check_target(json_out, overwrite=overwrite, inputs=inputs, stream=True)  # before minutes of work
        predictor = Predictor.load(weights, device)
        options = PredictOptions(detect=detect, workers=workers)
        reports = [evaluate_checkpoint(predictor, path, holdout=holdout, options=options) for path in data]
    console = Console()
    for report in reports:
        table = Table(title=f"{report['data']}: {report['faces']} faces ({report['missed']} not found)")
        table.add_column("keypoint")
        table.add_column("mean error (96-px units)", justify="right")
        for name, value in report["per_keypoint"].items():
            table.add_row(name, f"{value:.2f}")
        console.print(table)
        line = f"RMSE {report['rmse']:.3f} px(96)  NME {report['nme_percent']:.2f} %  failures (NME > 10 %) {report['failure_percent']:.2f} %"
        if "quality_vs_nme_spearman" in report:
            line += f"  quality~NME Spearman {report['quality_vs_nme_spearman']:+.2f}"
        console.print(line, highlight=False)
        if "points68" in report:
            figures = report["points68"]
            console.print(
                f"68 iBUG points: NME {figures['nme_percent']:.2f} % (outer eye corners)  "
                f"failures {figures['failure_percent']:.2f} %",
                highlight=False,
            )
    if json_out:
        with _clean_errors():
            write_bytes_atomic(
                json_out,
                json.dumps(reports if len(reports) > 1 else reports[0], indent=2) + "\n",
                overwrite=overwrite,
                inputs=inputs,
                stream=True,
            )


@app.command()
def submission(
    test_csv: Annotated[Path, typer.Argument(help="Kaggle test.csv (ImageId, Image).", show_default=False)],
    lookup: Annotated[Path, typer.Option(help="Kaggle IdLookupTable.csv.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Submission CSV to write.")] = Path("submission.csv"),
    model: ModelOption = None,
    weights: WeightsOption = None,
    device: DeviceOption = Device.auto,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output file.")] = False,
):
    """Write a Kaggle submission (RowId,Location), coordinates clipped to [0, 96]."""
    from .engine import Predictor
    from .evaluate import write_submission

    with _clean_errors():
        weights = resolve_weights(weights, model)
        rows = write_submission(
            Predictor.load(weights, device),
            test_csv,
            lookup,
            out,
            overwrite=overwrite,
            inputs=[test_csv, lookup, weights],
        )
    err.print(f"wrote {rows} rows to {out}", highlight=False)


@app.command()
def merge(
    outputs: Annotated[list[Path], typer.Argument(help="Shard outputs (CSV or JSONL) of one run.", show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Merged output file.")],
    check: Annotated[
        Optional[list[Path]], typer.Option(help="The run's inputs: report images missing from the shards.")
    ] = None,
    recursive: Annotated[bool, typer.Option(help="Walk --check folders recursively.")] = True,
    overwrite: Annotated[
        bool, typer.Option(help="Replace an existing -o file (never one of the shard outputs).")
    ] = False,
    shards: Annotated[
        Optional[int],
        typer.Option(
            min=1,
            help="The run's shard count N for --check (default: as predict --shard recorded it in each output's sidecar).",
        ),
    ] = None,
):
    """Combine shard outputs; refuse doubled images; with --check, list incomplete shards."""
    from .discover import discover
    from .shard import expected_outputs, merge_outputs, recorded_shards

    with _clean_errors():
        expected = expected_outputs(discover(check, recursive=recursive).files) if check else None
        recorded = recorded_shards(outputs) if check else None
        if shards and recorded and shards != recorded:
            raise FkpError(f"--shards {shards}, but the outputs record {recorded} shards")
        count = shards or recorded
        report = merge_outputs(outputs, out, expected, overwrite=overwrite, shards=count)
    err.print(f"merged {report['images']} images ({report['rows']} rows) into {out}", highlight=False)
    for warning in report["warnings"]:
        _say(f"warning: {warning}")
    for shard_out, image in report["dropped"]:
        err.print(
            f"[yellow]warning:[/yellow] {shard_out}: its run did not end cleanly; its last image {image} may "
            "lack faces and was left out (rerun that shard with --resume, then merge again)",
            highlight=False,
        )
    if report["missing"]:
        incomplete = ", ".join(f"shard {k}/{count}: {n} missing" for k, n in report["incomplete_shards"].items())
        err.print(
            f"[yellow]incomplete:[/yellow] {len(report['missing'])} images not in any shard output ({incomplete}); rerun those shards with --resume",
            highlight=False,
        )
        raise typer.Exit(1)


@app.command()
def export(
    onnx: Annotated[
        Path,
        typer.Option(
            help="ONNX file to write (input: uint8 crops N x 1 x S x S; outputs: keypoints in crop units, quality)."
        ),
    ],
    model: ModelOption = None,
    weights: WeightsOption = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing ONNX file.")] = False,
):
    """Export a keypoint model to ONNX, for other runtimes."""
    from .checkpoint import load_model
    from .export import export_onnx

    with _clean_errors():
        weights = resolve_weights(weights, model)
        network, spec = load_model(weights)
        export_onnx(network, spec, onnx, overwrite=overwrite, inputs=[weights])
    err.print(
        f"wrote {onnx} ({spec.arch}, {len(spec.keypoints)} keypoints, input {spec.input_size}x{spec.input_size} uint8)",
        highlight=False,
    )


@app.command()
def models():
    """List the shipped models (for --model) with their size, speed and accuracy, and the registered architectures."""
    from .models import list_models

    rows = [
        (
            f"{m.name} (default)" if m.name == DEFAULT_MODEL else m.name,
            m.file,
            f"{m.input_size} px",
            f"{m.faces_per_s} faces/s",
            f"NME {m.nme_faces15:.2f} % / {m.nme68_300w:.2f} %",
            m.summary,
        )
        for m in SHIPPED_MODELS.values()
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    typer.echo("Shipped models (--model NAME). Speed: model alone, batch 64, 2-core CPU. NME through predict:")
    typer.echo("15 points on held-out faces15 persons / 68 points on held-out HELEN + LFPW photos (manual labels);")
    typer.echo("figures from the model card, weights/README.md.")
    for row in rows:
        typer.echo("  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    typer.echo("Architectures (fkpbatch train --arch): " + ", ".join(list_models()))


def run() -> None:
    """Console-script entry point. A command-line usage error (a bad choice, a value out of range, an
    unknown option) is one line naming the fix, like every other error, instead of a framed box. A
    closed pipe on stdout (``fkpbatch ... | head``) ends any command quietly with 141 (128 + SIGPIPE,
    as ``yes | head`` under ``set -o pipefail``)."""
    _standard_fds()
    if sys.stdout is not None:
        sys.stdout = _Stdout(sys.stdout)
    try:
        code = app(prog_name="fkpbatch", standalone_mode=False)
    except PipeClosed as exc:
        _stdout_to_devnull()
        raise SystemExit(exc.exit_code) from None
    except typer.Abort:  # Ctrl-C outside a command's own handling (e.g. while parsing)
        raise SystemExit(130) from None
    except Exception as exc:  # noqa: BLE001 - the parser's usage errors, whichever click Typer bundles
        if not hasattr(exc, "format_message"):
            raise
        context = getattr(exc, "ctx", None)
        hint = f" (see '{context.command_path} --help')" if context is not None else ""
        err.print(f"[red]error:[/red] {exc.format_message()}{hint}", highlight=False, soft_wrap=True)
        raise SystemExit(getattr(exc, "exit_code", 2)) from None
    raise SystemExit(code if isinstance(code, int) else 0)


if __name__ == "__main__":  # pragma: no cover
    run()
