"""Crafted hostile files that tests and benchmarks/hostile_inputs.py both build: a zip checkpoint of
many tiny storages, and a sparse safetensors bank whose header claims a huge prompt."""

from __future__ import annotations

import io
import pickle
import struct
import zipfile
from collections import OrderedDict
from pathlib import Path


def many_storages(path: Path, count: int) -> Path:
    """A zip checkpoint of ``count`` one-float storages, each a tensor (as torch.save writes it,
    without torch.save's minutes): the attack of 300,000 tiny storages."""
    import torch

    class Storage:
        def __init__(self, key):
            self.key = key

    class Tensor:
        def __init__(self, key):
            self.key = key

        def __reduce__(self):
            return torch._utils._rebuild_tensor_v2, (Storage(self.key), 0, (1,), (1,), False, OrderedDict())

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            return ("storage", torch.FloatStorage, obj.key, "cpu", 1) if isinstance(obj, Storage) else None

    buf = io.BytesIO()
    Pickler(buf, protocol=2).dump({f"t{i}": Tensor(str(i)) for i in range(count)})
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("many/data.pkl", buf.getvalue())
        z.writestr("many/byteorder", b"little")
        for i in range(count):
            z.writestr(f"many/data/{i}", struct.pack("<f", 1.0))
        z.writestr("many/version", b"3\n")
    return path


def claiming_bank(path: Path, d: int) -> Path:
    """A bare F32 bank of N=1, T=1, r=1 and hidden size ``d``: a sparse file of 8*d bytes of holes
    (d = 4,300,000,000 claims a 17 GB prompt)."""
    from tests.support.banks import sparse_safetensors

    shapes = {"prompt_embeddings": [1, d], "prefix_task_cols": [1, 1, 1], "prefix_task_rows": [1, 1, d]}
    sparse_safetensors(path, {k: ("F32", v) for k, v in shapes.items()})
    return path
