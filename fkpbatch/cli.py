"""Thin Typer commands: parse options, call library functions, turn FkpError into one line + exit code."""

from __future__ import annotations

import json
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from . import __version__
from .detect import DEFAULT_MIN_SCORE
from .errors import FkpError

app = typer.Typer(
    help="Facial keypoints for large batches of face images: predict, train, evaluate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True)

# Options shared by several commands, declared once.
WeightsOption = Annotated[Optional[Path], typer.Option("--weights", "-w", help="Checkpoint from 'fkpbatch train' (default: the shipped model in weights/).")]
DeviceOption = Annotated[str, typer.Option(help="auto (CUDA if available, else MPS, else CPU) | cpu | cuda | mps.")]
WorkersOption = Annotated[Optional[int], typer.Option(help="DataLoader worker processes (default: min(4, cores)).", min=0)]
BatchOption = Annotated[int, typer.Option("--batch-size", "-b", help="Images per batch.", min=1)]
RuntimeOption = Annotated[str, typer.Option(help="auto (onnxruntime on the CPU, PyTorch on a GPU) | torch | onnxruntime.")]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or summary on stderr.")]
DetectOption = Annotated[str, typer.Option(help="auto: detect faces; an image <= 400 px with none found is taken as one tight face crop. always: detect only. never: the whole image is one face (Kaggle-style crops).")]


@contextmanager
def _clean_errors():
    """One line on stderr and the error's exit code instead of a traceback."""
    try:
        yield
    except FkpError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(exc.exit_code) from None


def _version(value: bool):
    if value:
        typer.echo(f"fkpbatch {__version__}")
        raise typer.Exit()


@app.callback()
def main(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")] = False):
    """fkpbatch: facial keypoints for folders of face photos."""


@app.command()
def predict(
    paths: Annotated[Optional[list[Path]], typer.Argument(help="Image files and folders (folders are walked recursively).", show_default=False)] = None,
    out: Annotated[str, typer.Option("--out", "-o", help="Output file; '-' = stdout.")] = "-",
    fmt: Annotated[Optional[str], typer.Option("--format", "-f", help="csv | json | jsonl (default: from the -o extension; CSV on stdout).")] = None,
    from_list: Annotated[Optional[str], typer.Option(help="File with one path per line ('-' = stdin).")] = None,
    recursive: Annotated[bool, typer.Option(help="Walk folders recursively.")] = True,
    weights: WeightsOption = None,
    device: DeviceOption = "auto",
    runtime: RuntimeOption = "auto",
    batch_size: BatchOption = 64,
    workers: WorkersOption = None,
    detect: DetectOption = "auto",
    faces: Annotated[str, typer.Option(help="all | largest (one face per image).")] = "all",
    min_score: Annotated[float, typer.Option(help="Minimum face detection score.", min=0.0, max=1.0)] = DEFAULT_MIN_SCORE,
    min_face: Annotated[int, typer.Option(help="Ignore detected faces smaller than this (box side, pixels).", min=0)] = 20,
    passes: Annotated[str, typer.Option(help="Detector passes on large photos: auto (a 480-px pass, a finer one where small "
                                        "faces are likely), one, two (always both).")] = "auto",
    unsure_score: Annotated[float, typer.Option(help="A detection scored below this whose keypoint quality is under 0.2 is "
                                                "not a face (a painting, the back of a head); 0 keeps them all.",
                                                min=0.0, max=1.0)] = 0.86,
    max_pixels: Annotated[int, typer.Option(help="Refuse images with more pixels (decompression bombs) as error rows.", min=1)] = 100_000_000,
    points: Annotated[str, typer.Option(help="15 (Kaggle keypoints) | 68 (adds iBUG p0_x..p67_y columns).")] = "15",
    annotate: Annotated[Optional[Path], typer.Option(help="Write annotated copies of the images under this folder.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output file.")] = False,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run: skip images already in -o FILE, append the rest.")] = False,
    shard: Annotated[Optional[str], typer.Option(help="K/N: process only shard K (0-based) of N, for job arrays.")] = None,
    strict: Annotated[bool, typer.Option(help="Exit 1 if any file failed.")] = False,
    engine: Annotated[str, typer.Option(help="local | ray (a Ray Data job; -o is then a folder of shards).")] = "local",
    ray_address: Annotated[Optional[str], typer.Option(help="Ray cluster address (default: start a local Ray).")] = None,
    num_gpus: Annotated[float, typer.Option(help="With --engine ray: GPUs per keypoint actor.", min=0.0)] = 0.0,
    concurrency: Annotated[int, typer.Option(help="With --engine ray: keypoint model actors (decoding runs as Ray tasks on the other CPUs).", min=1)] = 1,
    quiet: QuietOption = False,
):
    """Find facial keypoints in images and write one row per face (CSV on stdout by default)."""
    from .batch import BatchRequest, run_batch
    from .engine import Predictor, PredictOptions
    from .runtime import default_workers
    from .shard import parse_shard

    with _clean_errors():
        if points not in ("15", "68"):
            raise FkpError(f"--points must be 15 or 68, not {points!r}")
        request = BatchRequest(tuple(paths or ()), out, fmt, points, recursive, from_list, annotate, overwrite, resume)
        options = PredictOptions(detect, faces, min_score, min_face, max_pixels, batch_size,
                                 default_workers() if workers is None else workers, passes=passes,
                                 unsure_score=unsure_score)
        shard_spec = parse_shard(shard) if shard else None
        if engine not in ("local", "ray"):
            raise FkpError(f"--engine must be local or ray, not {engine!r}")
        if engine == "ray":
            _predict_with_ray(request, options, weights, device, ray_address, num_gpus, concurrency, quiet)
            return
        predictor = Predictor.load(weights, device, runtime)
        progress = _progress(quiet)
        try:
            with progress:
                task = progress.add_task("predicting", total=None)
                summary = run_batch(predictor, request, options, shard=shard_spec,
                                    on_start=lambda n: progress.update(task, total=n),
                                    on_batch=lambda n: progress.advance(task, n))
        except KeyboardInterrupt:
            target = out if out != "-" else "FILE"
            err.print(f"interrupted; rows written so far are complete. Continue with: fkpbatch predict ... -o {target} --resume", highlight=False)
            raise typer.Exit(130) from None
    for warning in summary.warnings[:20]:
        err.print(f"warning: {warning}", highlight=False)
    if not quiet:
        err.print(summary.line(), highlight=False)
    if strict and summary.errors:
        raise typer.Exit(1)


def _predict_with_ray(request, options, weights, device, address, num_gpus, concurrency, quiet) -> None:
    from .ray_engine import run_ray

    if request.out == "-":
        raise FkpError("--engine ray writes shards into a folder: give -o DIR")
    count = run_ray(list(request.paths), Path(request.out), weights=weights, options=options, fmt=request.fmt or "csv",
                    points=request.points, recursive=request.recursive, from_list=request.from_list, address=address,
                    num_gpus=num_gpus, concurrency=concurrency, device=device)
    if not quiet:
        err.print(f"{count} input files processed by Ray; shards in {request.out}", highlight=False)


def _progress(quiet: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=err, disable=quiet or not err.is_terminal, transient=True)


@app.command()
def train(
    data: Annotated[Optional[list[Path]], typer.Argument(help="Kaggle training.csv and/or folder CSVs (image + keypoint columns, images beside it).", show_default=False)] = None,
    recipe: Annotated[Optional[str], typer.Option(help="seed (the Kaggle notebook: seed net, MSE, Adam 1e-3, flip+brightness) | fkpnet (the shipped model's). Default: seed for Kaggle CSVs, fkpnet otherwise.")] = None,
    arch: Annotated[Optional[str], typer.Option(help="Architecture (see 'fkpbatch models').")] = None,
    points: Annotated[Optional[str], typer.Option(help="15 | 68 keypoints to learn (68 needs p0_x..p67_y columns).")] = None,
    epochs: Annotated[Optional[int], typer.Option(min=1, help="Epochs (recipe: seed 100, fkpnet 60); with --resume, the new total.")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", "-b", min=1, help="Batch size (recipe: seed 64, fkpnet 32).")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Adam learning rate (recipe: seed 1e-3, fkpnet 2e-3).")] = None,
    val_split: Annotated[float, typer.Option(help="Fraction held out for validation.", min=0.0, max=0.9)] = 0.1,
    group_by: Annotated[Optional[str], typer.Option(help="Regex whose first group names an image's group (e.g. '^(.+)_[^_]+$' = person); groups never straddle the split.")] = None,
    augment: Annotated[Optional[str], typer.Option(help="none | seed (flip with left/right swap, brightness) | strong (+ rotation, scale, shift).")] = None,
    vflip: Annotated[bool, typer.Option(help="Also flip vertically (teaches upside-down faces; off by default).")] = False,
    input_size: Annotated[Optional[int], typer.Option(help="Model input side in pixels (recipes: 96).")] = None,
    images: Annotated[Optional[Path], typer.Option(help="Folder of the images of folder CSVs (default: beside the CSV).")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Run folder (default runs/<timestamp>).")] = None,
    resume: Annotated[Optional[Path], typer.Option(help="Continue the run in this folder from its last.pt.")] = None,
    init: Annotated[Optional[Path], typer.Option(help="Fine-tune: start from these weights (e.g. weights/fkpnet68.pt) instead of random ones; same --arch and --points, any --input-size.")] = None,
    label_offset: Annotated[Optional[list[str]], typer.Option(metavar="DX,DY", help="Pixels: where a CSV's labels sit relative to the pixel grid (1,1 for 1-based coordinates), once per CSV in order. Flips then keep the convention instead of blurring it.", show_default=False)] = None,
    seed: Annotated[int, typer.Option(help="Random seed (splits, initialisation, augmentation).")] = 0,
    device: DeviceOption = "auto",
    workers: Annotated[int, typer.Option(min=0, help="DataLoader workers.")] = 2,
    strict: Annotated[bool, typer.Option(help="Missing image files are an error, not a warning.")] = False,
    quiet: QuietOption = False,
):
    """Train a keypoint model; writes best.pt, last.pt, metrics.jsonl, config.json and loss.png."""
    from .train import build_config, resume_training, train as run_training

    log = (lambda message: None) if quiet else (lambda message: err.print(message, highlight=False))
    show = not quiet and err.is_terminal
    with _clean_errors():
        try:
            if resume is not None:
                best = resume_training(resume, epochs=epochs, device=device, workers=workers, show_progress=show, log=log)
            else:
                if not data:
                    raise FkpError("give at least one training CSV (or --resume RUN_DIR)")
                config = build_config(
                    tuple(str(p) for p in data), recipe=recipe, arch=arch, points=points, epochs=epochs, batch_size=batch_size,
                    lr=lr, val_split=val_split, group_by=group_by, augment=augment, vflip=vflip, input_size=input_size,
                    images_dir=str(images) if images else None, init=str(init) if init else None, label_offsets=tuple(label_offset or ()), seed=seed, device=device, workers=workers, strict=strict,
                )
                run_dir = out or Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")
                best = run_training(config, run_dir, show_progress=show, log=log)
        except KeyboardInterrupt:
            raise typer.Exit(130) from None
    if not quiet:
        err.print(f"best weights: {best}", highlight=False)


@app.command()
def evaluate(
    data: Annotated[list[Path], typer.Argument(help="Labelled data: Kaggle CSV or folder CSV.", show_default=False)],
    weights: WeightsOption = None,
    holdout: Annotated[Optional[Path], typer.Option(help="Training run folder: evaluate only the images it held out.")] = None,
    detect: DetectOption = "auto",
    device: DeviceOption = "auto",
    workers: WorkersOption = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write the figures to this JSON file.")] = None,
):
    """RMSE (Kaggle 96-pixel units), NME (% of outer-eye-corner distance), failure rate, per keypoint."""
    from .engine import Predictor, PredictOptions
    from .evaluate import evaluate_checkpoint
    from .runtime import default_workers

    with _clean_errors():
        predictor = Predictor.load(weights, device)
        options = PredictOptions(detect=detect, workers=default_workers() if workers is None else workers)
        reports = [evaluate_checkpoint(predictor, path, holdout=holdout, options=options) for path in data]
    console = Console()
    for report in reports:
        table = Table(title=f"{report['data']}: {report['faces']} faces ({report['missed']} not found)")
        table.add_column("keypoint")
        table.add_column("mean error (96-px units)", justify="right")
        for name, value in report["per_keypoint"].items():
            table.add_row(name, f"{value:.2f}")
        console.print(table)
        line = (f"RMSE {report['rmse']:.3f} px(96)  NME {report['nme_percent']:.2f} %  failures (NME > 10 %) {report['failure_percent']:.2f} %")
        if "quality_vs_nme_spearman" in report:
            line += f"  quality~NME Spearman {report['quality_vs_nme_spearman']:+.2f}"
        console.print(line, highlight=False)
    if json_out:
        json_out.write_text(json.dumps(reports if len(reports) > 1 else reports[0], indent=2) + "\n")


@app.command()
def submission(
    test_csv: Annotated[Path, typer.Argument(help="Kaggle test.csv (ImageId, Image).", show_default=False)],
    lookup: Annotated[Path, typer.Option(help="Kaggle IdLookupTable.csv.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Submission CSV to write.")] = Path("submission.csv"),
    weights: WeightsOption = None,
    device: DeviceOption = "auto",
):
    """Write a Kaggle submission (RowId,Location), coordinates clipped to [0, 96]."""
    from .engine import Predictor
    from .evaluate import write_submission

    with _clean_errors():
        rows = write_submission(Predictor.load(weights, device), test_csv, lookup, out)
    err.print(f"wrote {rows} rows to {out}", highlight=False)


@app.command()
def merge(
    outputs: Annotated[list[Path], typer.Argument(help="Shard outputs (CSV or JSONL) of one run.", show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Merged output file.")],
    check: Annotated[Optional[list[Path]], typer.Option(help="The run's inputs: report images missing from the shards.")] = None,
    recursive: Annotated[bool, typer.Option(help="Walk --check folders recursively.")] = True,
):
    """Combine shard outputs; refuse doubled images; with --check, list incomplete shards."""
    from .discover import discover
    from .shard import merge_outputs

    with _clean_errors():
        expected = [f.name for f in discover(check, recursive=recursive).files] if check else None
        report = merge_outputs(outputs, out, expected)
    err.print(f"merged {report['images']} images ({report['rows']} rows) into {out}", highlight=False)
    if report["missing"]:
        shards = ", ".join(f"shard {k}/{len(outputs)}: {n} missing" for k, n in report["incomplete_shards"].items())
        err.print(f"[yellow]incomplete:[/yellow] {len(report['missing'])} images not in any shard output ({shards}); rerun those shards with --resume", highlight=False)
        raise typer.Exit(1)


@app.command()
def export(
    onnx: Annotated[Path, typer.Option(help="ONNX file to write (input: uint8 crops N x 1 x S x S; outputs: keypoints in crop units, quality).")],
    weights: WeightsOption = None,
):
    """Export a keypoint model to ONNX, for other runtimes."""
    from .checkpoint import load_model
    from .engine import DEFAULT_WEIGHTS
    from .export import export_onnx

    with _clean_errors():
        model, spec = load_model(weights or DEFAULT_WEIGHTS)
        export_onnx(model, spec, onnx)
    err.print(f"wrote {onnx} ({spec.arch}, {len(spec.keypoints)} keypoints, input {spec.input_size}x{spec.input_size} uint8)", highlight=False)


@app.command()
def models():
    """List the registered architectures."""
    from .models import list_models

    for name in list_models():
        typer.echo(name)


def run() -> None:
    """Console-script entry point."""
    app(prog_name="fkpbatch")


if __name__ == "__main__":  # pragma: no cover
    run()
