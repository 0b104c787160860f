"""Train the built-in demo models on scikit-learn's handwritten digits and write the shipped assets.

Run ``python scripts/train_builtin.py [--model vit-digits|swin-digits|all] [--epochs N]`` (needs the dev extra
``scikit-learn`` only when ``assets/digits.safetensors`` does not exist yet). It writes, under ``assets/``:

- ``digits.safetensors`` (once; an existing file is checked against scikit-learn's data and kept): raw pixels
  ``images`` uint8 [1797, 8, 8] (values 0..16), ``labels`` int64 [1797], and sorted int64 index arrays
  ``test_idx`` [500] and ``train_idx`` [1297] (a seeded random split, seed 0) and ``calib_idx`` [256]
  (a seeded random subset of train, so calibration never overlaps test).
- ``<name>.safetensors``: the trained model's float32 ``state_dict``.
- ``models.json``: per built-in name the timm arch name and keyword arguments, input size, normalisation, the
  float top-1 (percent) on the test split measured here, the weights file's sha256 and size, and the recipe.

Recipe (both models): inputs from :func:`quant.data.load_builtin_digits` (bilinear upsampling to 32x32, 3
channels, normalised with ``DIGITS_MEAN``/``DIGITS_STD``); per-batch random affine augmentation on the [0, 1]
images (rotation +-10 degrees, scale 0.9..1.1, shift +-2 px at 32x32); AdamW, linear warm-up then cosine
decay, label smoothing 0.1, stochastic depth during training only; the final epoch's weights are shipped (the
test split is never used for selection). Runs are deterministic for a given machine: seeded torch/numpy,
deterministic algorithms and a fixed thread count (``--threads``, recorded in models.json; float sums
depend on it).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn.functional as F

from quant.builtin import ASSETS_DIR
from quant.data import DIGITS_MEAN, DIGITS_PATH, DIGITS_STD, load_builtin_digits

__all__ = ["ASSETS_DIR", "RECIPES", "evaluate_top1", "main", "train_model", "write_digits"]

MODELS_JSON = ASSETS_DIR / "models.json"
N_TEST = 500
N_CALIB = 256
SPLIT_SEED = 0
IMG_SIZE = 32

#: Per built-in model: timm arch name, the keyword arguments that define the network (stored in models.json
#: and used at load time), training-only keyword arguments, and the optimisation recipe.
RECIPES: dict[str, dict] = {
    "vit-digits": {
        "arch": "vit_tiny_patch16_224",
        "arch_kwargs": {
            "img_size": IMG_SIZE,
            "patch_size": 4,
            "embed_dim": 96,
            "depth": 6,
            "num_heads": 3,
            "mlp_ratio": 4.0,
            "num_classes": 10,
            "global_pool": "token",
        },
        "train_kwargs": {"drop_path_rate": 0.1},
        "epochs": 60,
        "batch_size": 64,
        "lr": 1e-3,
        "weight_decay": 0.05,
        "warmup_epochs": 5,
    },
    "swin-digits": {
        "arch": "swin_tiny_patch4_window7_224",
        "arch_kwargs": {
            "img_size": IMG_SIZE,
            "patch_size": 2,
            "window_size": 4,
            "embed_dim": 48,
            "depths": [2, 2, 2],
            "num_heads": [3, 6, 12],
            "mlp_ratio": 4.0,
            "num_classes": 10,
            "drop_path_rate": 0.0,
        },
        "train_kwargs": {"drop_path_rate": 0.1},
        "epochs": 60,
        "batch_size": 64,
        "lr": 1e-3,
        "weight_decay": 0.05,
        "warmup_epochs": 5,
    },
}


def _setup_determinism(seed: int, threads: int) -> None:
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(seed)
    np.random.seed(seed)


def write_digits(path: Path = DIGITS_PATH) -> None:
    """Write the digits asset from scikit-learn once; an existing file is checked against it and kept."""
    from safetensors.torch import load_file, save_file
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(digits.images.astype(np.uint8))  # [1797, 8, 8], values 0..16
    labels = torch.from_numpy(digits.target.astype(np.int64))
    if path.exists():
        existing = load_file(str(path))
        if not (torch.equal(existing["images"], images) and torch.equal(existing["labels"], labels)):
            raise SystemExit(f"{path} does not match scikit-learn's digits; delete it to regenerate")
        print(f"kept existing {path}")
        return
    rng = np.random.default_rng(SPLIT_SEED)
    perm = rng.permutation(len(labels))
    test_idx = np.sort(perm[:N_TEST])
    train_idx = np.sort(perm[N_TEST:])
    calib_idx = np.sort(rng.choice(train_idx, size=N_CALIB, replace=False))
    tensors = {
        "images": images.contiguous(),
        "labels": labels.contiguous(),
        "train_idx": torch.from_numpy(train_idx.astype(np.int64)),
        "calib_idx": torch.from_numpy(calib_idx.astype(np.int64)),
        "test_idx": torch.from_numpy(test_idx.astype(np.int64)),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(
        tensors, str(path), metadata={"source": "sklearn.datasets.load_digits", "split_seed": str(SPLIT_SEED)}
    )
    print(f"wrote {path}")


def _augment(x01: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random affine of [0, 1] images ``[B, C, H, W]``: rotation +-10 deg, scale 0.9..1.1, shift +-2/32 px."""
    b = x01.shape[0]
    angle = (torch.rand(b, generator=generator) * 2 - 1) * math.radians(10)
    scale = 0.9 + torch.rand(b, generator=generator) * 0.2
    shift = (torch.rand(b, 2, generator=generator) * 2 - 1) * (2.0 / IMG_SIZE) * 2  # normalised coords span 2
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
    )
    grid = F.affine_grid(theta, list(x01.shape), align_corners=False)
    return F.grid_sample(x01, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


@torch.no_grad()
def evaluate_top1(
    model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 250
) -> float:
    """Top-1 accuracy in percent (0..100) of ``model`` on ``images [N, 3, H, W]`` with ``labels [N]``."""
    model.eval()
    correct = 0
    for start in range(0, len(labels), batch_size):
        logits = model(images[start : start + batch_size])
        correct += int((logits.argmax(-1) == labels[start : start + batch_size]).sum())
    return 100.0 * correct / len(labels)


def train_model(
    name: str, epochs: int | None = None, seed: int = 0, threads: int = 2
) -> tuple[torch.nn.Module, dict]:
    """Train built-in model ``name`` from scratch.

    Returns the float model (eval mode) and its models.json entry; the entry lacks ``weights``, ``sha256`` and
    ``size_bytes``, which are added when the weights are saved.
    """
    recipe = RECIPES[name]
    epochs = recipe["epochs"] if epochs is None else epochs
    _setup_determinism(seed, threads)
    model = timm.create_model(
        recipe["arch"], pretrained=False, **{**recipe["arch_kwargs"], **recipe["train_kwargs"]}
    )
    raw = load_builtin_digits("train", IMG_SIZE, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    test = load_builtin_digits("test", IMG_SIZE)
    mean = torch.tensor(DIGITS_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(DIGITS_STD).view(1, 3, 1, 1)
    x01, y = raw.images[:, :1].contiguous(), raw.labels  # augment one channel, expand to 3 afterwards

    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe["lr"], weight_decay=recipe["weight_decay"])
    steps_per_epoch = math.ceil(len(y) / recipe["batch_size"])
    total, warmup = epochs * steps_per_epoch, recipe["warmup_epochs"] * steps_per_epoch

    def lr_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    generator = torch.Generator().manual_seed(seed)
    start_time = time.perf_counter()
    start_cpu = time.process_time()
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(y), generator=generator)
        loss_sum = 0.0
        for start in range(0, len(y), recipe["batch_size"]):
            idx = order[start : start + recipe["batch_size"]]
            xb = (_augment(x01[idx], generator).expand(-1, 3, -1, -1) - mean) / std
            loss = F.cross_entropy(model(xb), y[idx], label_smoothing=0.1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum += loss.detach().item() * len(idx)
        if epoch % 5 == 4 or epoch == epochs - 1:
            top1 = evaluate_top1(model, test.images, test.labels)
            elapsed = time.perf_counter() - start_time
            print(
                f"{name} epoch {epoch + 1}/{epochs} loss {loss_sum / len(y):.4f} test top-1 {top1:.2f}% "
                f"({elapsed:.0f}s)",
                flush=True,
            )
    seconds = time.perf_counter() - start_time
    cpu_seconds = time.process_time() - start_cpu
    model.eval()
    top1 = round(evaluate_top1(model, test.images, test.labels), 2)
    entry = {
        "arch": recipe["arch"],
        "arch_kwargs": recipe["arch_kwargs"],
        "input_size": [3, IMG_SIZE, IMG_SIZE],
        "mean": list(DIGITS_MEAN),
        "std": list(DIGITS_STD),
        "interpolation": "bilinear",
        "crop_pct": 1.0,
        "crop_mode": "center",
        "num_classes": 10,
        "dataset": "builtin:digits",
        "float_test_top1": top1,
        "training": {
            "epochs": epochs,
            "seed": seed,
            "batch_size": recipe["batch_size"],
            "lr": recipe["lr"],
            "weight_decay": recipe["weight_decay"],
            "warmup_epochs": recipe["warmup_epochs"],
            "train_kwargs": recipe["train_kwargs"],
            "seconds": round(seconds, 1),
            "cpu_seconds": round(cpu_seconds, 1),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "timm": timm.__version__,
            "python": platform.python_version(),
        },
    }
    return model, entry


def _save(name: str, model: torch.nn.Module, entry: dict) -> None:
    from safetensors.torch import save_file

    weights = ASSETS_DIR / f"{name}.safetensors"
    state = {k: v.detach().to(torch.float32).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(weights), metadata={"arch": entry["arch"], "builtin": name})
    data = weights.read_bytes()
    entry = {
        **entry,
        "weights": weights.name,
        "sha256": hashlib.sha256(data).hexdigest(),
        "size_bytes": len(data),
    }
    models = json.loads(MODELS_JSON.read_text()) if MODELS_JSON.exists() else {}
    models[name] = entry
    MODELS_JSON.write_text(json.dumps(dict(sorted(models.items())), indent=2) + "\n")
    print(f"wrote {weights} ({len(data)} bytes), float test top-1 {entry['float_test_top1']:.2f}%")


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the process exit code."""
    parser = argparse.ArgumentParser(prog="python scripts/train_builtin.py", description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=[*RECIPES, "all"], default="all")
    parser.add_argument("--epochs", type=int, default=None, help="override the recipe's epoch count")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, choices=[1, 2], default=2, help="torch intra-op threads")
    args = parser.parse_args(argv)
    write_digits()
    names = list(RECIPES) if args.model == "all" else [args.model]
    for name in names:
        model, entry = train_model(name, epochs=args.epochs, seed=args.seed, threads=args.threads)
        _save(name, model, entry)
    return 0


if __name__ == "__main__":
    sys.exit(main())
