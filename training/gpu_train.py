"""Train candidate models side by side on one GPU machine within a fixed time, then run the GPU
tests and a short GPU throughput benchmark: one prepared command for a lent machine.

    python3 training/gpu_train.py OUT_DIR [--train-seconds 350] [--data .gpudata]
    python3 training/gpu_train.py OUT_DIR --run accurate:fkpnet_wide:128:weights/fkpnet68_128.pt:5e-4

Each run is calibrated first (2 epochs of every run at once, timed by when each epoch's metrics
line appears), then trained from scratch with the number of epochs that fits the time left, so
that every run completes its whole cosine schedule: its last epoch is what may ship, nothing is
chosen on the held-out faces. The exact ``fkpbatch train`` command of each run lands in
OUT_DIR/commands.txt. The data is ``training/pack_data.py``'s folder (the lent machine's working
tree may carry at most 64 MiB); ``--device cpu --train-seconds 60`` is the dry run for a CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # a lent machine runs the checkout without installing it
GROUP = "^(?!image_)(.+)_[^_]+$"
# NAME:ARCH:SIZE[:INIT[:LR]] per run (--run): 0.3.0's accurate candidate and two fast ones, from scratch
RUNS = ("accurate:fkpnet_wide:128", "fast96:fkpnet_small:96", "fast112:fkpnet_small:112")


def parse_run(text: str) -> tuple[str, str, int, str | None, str | None]:
    """'NAME:ARCH:SIZE[:INIT[:LR]]' -> (name, arch, size, init or None, lr or None); INIT is a
    checkpoint (e.g. weights/fkpnet68_128.pt, to continue a shipped model) or empty."""
    name, arch, size, *rest = text.split(":")
    init, lr = (rest + ["", ""])[:2]
    return name, arch, int(size), init or None, lr or None


def command(data: Path, folder: Path, run: tuple, epochs: int, args) -> list[str]:
    csvs = [str(data / name / "keypoints.csv") for name in ("faces15", "helen_train", "lfpw_train")]
    offsets = ["--label-offset", "1,1", "--label-offset", "0,0", "--label-offset", "0,0"]
    _, arch, size, init, lr = run
    start = (["--init", init] if init else []) + (["--lr", lr] if lr else [])
    return [
        sys.executable, "-m", "fkpbatch", "train", *csvs, "--points", "68", "--group-by", GROUP, *offsets,
        "--arch", arch, "--input-size", str(size), "--epochs", str(epochs), "--workers", str(args.workers),
        "--device", args.device, "-o", str(folder), "--overwrite", *start,
    ]  # fmt: skip


def launch(runs, epochs: dict, root: Path, args) -> dict:
    """Start every run; returns name -> (process, its folder, its log file)."""
    started = {}
    for run in runs:
        name = run[0]
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        log = open(root / f"{name}.log", "w")
        argv = command(args.data, folder, run, epochs[name], args)
        log.write(shlex.join(argv) + "\n")
        log.flush()
        started[name] = (subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=REPO), folder, log)
    return started


def epochs_done(folder: Path) -> int:
    try:
        return len((folder / "metrics.jsonl").read_text().splitlines())
    except OSError:
        return 0


def watch(started: dict, deadline: float) -> dict:
    """Wait for every run; note when each epoch ended; Ctrl-C a run still going at ``deadline``
    (it keeps its last finished epoch). Returns name -> list of epoch end times."""
    ends = {name: [] for name in started}
    stopped = set()
    while any(p.poll() is None for p, _, _ in started.values()):
        now = time.time()
        for name, (process, folder, _) in started.items():
            while epochs_done(folder) > len(ends[name]):
                ends[name].append(now)
            if process.poll() is None and now > deadline and name not in stopped:
                process.send_signal(signal.SIGINT)  # once: a second Ctrl-C would cut its saving short
                stopped.add(name)
        time.sleep(0.2)
    for name, (_, folder, log) in started.items():
        log.close()
        while epochs_done(folder) > len(ends[name]):
            ends[name].append(time.time())
    return ends


def export(name: str, folder: Path, out: Path) -> dict:
    """last.pt without the optimizer state (what ships), as OUT/NAME.pt."""
    from fkpbatch.checkpoint import load_checkpoint, load_model, save_checkpoint

    state = load_checkpoint(folder / "last.pt")
    model, spec = load_model(folder / "last.pt")
    save_checkpoint(out / f"{name}.pt", spec, model, epoch=state["epoch"], config=state["config"])
    return {"epoch": state["epoch"], "epochs": state["config"]["epochs"]}


def run_step(argv: list[str], log: Path, seconds: int, env=None) -> str:
    with open(log, "w") as handle:
        try:
            code = subprocess.run(argv, stdout=handle, stderr=subprocess.STDOUT, timeout=seconds, cwd=REPO, env=env)
            return "passed" if code.returncode == 0 else f"failed (exit {code.returncode})"
        except subprocess.TimeoutExpired:
            return f"timed out after {seconds} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--data", type=Path, default=REPO / ".gpudata")
    parser.add_argument("--train-seconds", type=float, default=350)
    parser.add_argument("--workers", type=int, default=5, help="DataLoader workers per run")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--runs-dir", type=Path, default=Path("/tmp/fkpbatch_gpu_runs"))
    parser.add_argument("--check-seconds", type=int, default=90, help="limit for the GPU tests and for the benchmark")
    parser.add_argument(
        "--run", action="append", help="NAME:ARCH:SIZE[:INIT[:LR]], once per run (default: 0.3.0's three candidates)"
    )
    args = parser.parse_args()
    args.data = args.data.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    runs = [parse_run(text) for text in args.run or RUNS]
    begin = time.time()
    deadline = begin + args.train_seconds
    summary: dict = {"device": args.device}
    try:
        import torch

        summary["torch"] = torch.__version__
        summary["gpu"] = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    except Exception as exc:  # noqa: BLE001 - report it, go on
        summary["torch"] = repr(exc)
    print(json.dumps(summary), flush=True)

    # 1. calibration: 2 epochs of every run at once (they share the GPU and the cores later too)
    calibration = launch(runs, {run[0]: 2 for run in runs}, args.runs_dir / "calibration", args)
    started = time.time()
    ends = watch(calibration, deadline)
    plan = {}
    now = time.time()
    for name, *_ in runs:
        if len(ends[name]) < 2:
            print(f"{name}: calibration failed, see its log", flush=True)
            continue
        per_epoch = ends[name][1] - ends[name][0]
        overhead = ends[name][0] - started - per_epoch
        plan[name] = max(4, int((deadline - now - overhead - 10) / (per_epoch * 1.06)))
        summary[f"{name}_calibration"] = {"seconds_per_epoch": round(per_epoch, 2), "start_up": round(overhead, 1)}
    print(json.dumps({"plan": plan, "calibration_s": round(now - begin, 1)}), flush=True)

    # 2. the runs, each with its whole schedule
    chosen = [r for r in runs if r[0] in plan]
    training = launch(chosen, plan, args.runs_dir, args)
    train_started = time.time()
    ends = watch(training, deadline + 45)
    commands = []
    for run in chosen:
        name = run[0]
        try:
            summary[name] = export(name, args.runs_dir / name, args.out)
        except Exception as exc:  # noqa: BLE001
            summary[name] = {"error": repr(exc)}
        summary[name]["seconds"] = round((ends[name] or [time.time()])[-1] - train_started, 1)
        commands.append(shlex.join(command(Path("DATA"), Path(f"runs/{name}"), run, plan[name], args)))
    (args.out / "commands.txt").write_text("\n".join(commands) + "\n")
    print(json.dumps({k: summary[k] for k in plan}), flush=True)

    # 3. GPU tests and a short throughput benchmark (their data: the packed folder)
    env = dict(os.environ, FKPBATCH_DATA=str(args.data))
    logs = args.runs_dir / "checks"
    logs.mkdir(parents=True, exist_ok=True)
    if args.device == "cuda":
        summary["gpu_tests"] = run_step(
            [sys.executable, "-m", "pytest", "-m", "gpu", "tests", "-q", "-p", "no:cacheprovider", "-rs"],
            logs / "gpu_tests.txt",
            args.check_seconds,
            env,
        )
        summary["throughput"] = run_step(
            [sys.executable, "benchmarks/throughput.py", "--device", "cuda", "--images", "3000", "--compare-device",
             "--data", str(args.data), "--json", str(args.out / "gpu_throughput.json")],
            logs / "gpu_throughput.log",
            args.check_seconds,
            env,
        )  # fmt: skip
    summary["seconds"] = round(time.time() - begin, 1)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    with tarfile.open(args.out / "runs.tar.gz", "w:gz") as tar:
        for path in sorted(args.runs_dir.rglob("*")):
            if path.is_file() and path.suffix in (".csv", ".jsonl", ".json", ".log", ".txt", ".png"):
                tar.add(path, arcname=str(path.relative_to(args.runs_dir)))
    print(json.dumps(summary, indent=2), flush=True)


if __name__ == "__main__":
    main()
