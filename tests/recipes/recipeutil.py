"""Helpers for the recipe tests (the fixtures are in conftest.py)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import torch

N, D, R = 4, 16384, 4
GLUE = ["sst2", "mnli", "qqp", "qnli", "rte", "wnli", "cola", "stsb"]
CONFIG = {"task_type": "CAUSAL_LM", "num_virtual_tokens": N, "num_transformer_submodules": 1}


def make_bank(pe, T, r, names, seed):
    import mptkit

    g = torch.Generator().manual_seed(seed)
    tensors = {
        "prompt_embeddings": mptkit.Array.from_torch(pe),
        "prefix_task_cols": mptkit.Array.from_torch(torch.randn(T, pe.shape[0], r, generator=g)),
        "prefix_task_rows": mptkit.Array.from_torch(torch.randn(T, r, pe.shape[1], generator=g) / 3),
    }
    return mptkit.PromptBank(tensors, names).with_config(CONFIG)


def tensors_of(path) -> dict:
    from tests.support.banks import load_tensors

    path = Path(path)
    return load_tensors(path / "adapter_model.safetensors" if path.is_dir() else path)


def names_of(path) -> list | None:
    import mptkit

    return mptkit.load(path).task_names


def flip_byte(path, task: int, tensor: str = "prefix_task_rows", at: int | None = None) -> None:
    """Flip one bit of one byte of task ``task``'s ``tensor`` rows, in place (size unchanged)."""
    path = Path(path)
    f = path / "adapter_model.safetensors" if path.is_dir() else path
    with open(f, "r+b") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        info = json.loads(fh.read(n))[tensor]
        row = 4 * int(torch.tensor(info["shape"][1:]).prod())
        off = 8 + n + info["data_offsets"][0] + task * row + (row // 2 if at is None else at)
        fh.seek(off)
        b = fh.read(1)
        fh.seek(off)
        fh.write(bytes([b[0] ^ 0x40]))


def write(path, text: str) -> Path:
    Path(path).write_text(text, encoding="utf-8")
    return Path(path)
