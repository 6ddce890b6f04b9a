"""Frozen settings passed through training and prediction instead of a mutable ``args``."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run; saved as config.json and inside checkpoints."""

    data: tuple[str, ...]
    arch: str = "seed"
    points: str = "15"
    input_size: int = 96
    epochs: int = 100
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    loss: str = "mse"  # mse (seed recipe) | l1
    schedule: str = "constant"  # constant (seed recipe) | cosine
    val_split: float = 0.1
    group_by: str | None = None
    augment: str = "seed"  # none | seed | strong
    vflip: bool = False
    jitter: float = 0.06
    framing_scale: float = 1.29
    framing_shift: float = 0.27
    images_dir: str | None = None
    # Per data file: where its labels sit relative to a mirror-consistent pixel grid, (dx, dy) in
    # pixels; e.g. (1, 1) for 1-based coordinates. Empty = all (0, 0).
    label_offsets: tuple[tuple[float, float], ...] = ()
    init: str | None = None  # start from these weights (fine-tuning) instead of a random init
    seed: int = 0
    workers: int = 2
    device: str = "auto"
    strict: bool = False

    def to_dict(self) -> dict:
        return asdict(self)
