"""The one place the tests and benchmarks build banks.

- PEFT's own: :func:`tiny_base_model`, :func:`peft_model`, :func:`save_peft_bank` (an adapter folder
  PEFT's ``save_pretrained`` writes).
- Bare ``.safetensors`` files written by the safetensors package (not mptkit): :func:`write_bank`,
  :func:`random_bank`, :func:`big_bank` (~42 MB), :func:`medium_bank` (an adapter folder of ~400 kB,
  saved by mptkit), :func:`sparse_bank` (any size, mostly holes), :func:`stream_bank` (any size,
  every value random, in bounded memory).
- In memory: :func:`memory_bank`.
- Reading back for checks: :func:`load_tensors` (the safetensors package), :func:`full_prompts`,
  :func:`peft_load` (PEFT).

torch is imported inside the functions: a benchmark that imports this module stays small, so the
peak RSS it reads for its children (``ru_maxrss`` includes the parent's peak at fork) stays theirs.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path


def _dtypes() -> dict:
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def __getattr__(name: str):
    if name == "DTYPES":  # {"float32": torch.float32, ...}, made on first use (torch is imported then)
        return _dtypes()
    raise AttributeError(name)


def tiny_base_model(kind: str):
    """A tiny transformers model built from a config: "seq2seq" (T5, 2 submodules) or "causal" (GPT-2)."""
    import torch

    torch.manual_seed(1234)
    if kind == "seq2seq":
        from transformers import T5Config, T5ForConditionalGeneration

        return T5ForConditionalGeneration(
            T5Config(
                vocab_size=96,
                d_model=24,
                d_kv=6,
                d_ff=48,
                num_layers=1,
                num_decoder_layers=1,
                num_heads=4,
                decoder_start_token_id=0,
                pad_token_id=0,
                eos_token_id=1,
            )
        )
    if kind == "causal":
        from transformers import GPT2Config, GPT2LMHeadModel

        return GPT2LMHeadModel(
            GPT2Config(vocab_size=96, n_embd=24, n_layer=1, n_head=4, n_positions=64, bos_token_id=1, eos_token_id=1)
        )
    raise ValueError(kind)


def task_type(kind: str) -> str:
    return {"seq2seq": "SEQ_2_SEQ_LM", "causal": "CAUSAL_LM"}[kind]


def peft_model(
    kind: str,
    *,
    num_tasks: int = 3,
    num_ranks: int = 2,
    num_virtual_tokens: int = 5,
    init: str = "RANDOM",
    init_path: str | None = None,
    init_task: int = 0,
    seed: int = 0,
):
    """A PEFT MPT model over a tiny base model (float32), built as a user would."""
    import torch
    from peft import MultitaskPromptTuningConfig, get_peft_model

    base = tiny_base_model(kind)
    cfg = MultitaskPromptTuningConfig(
        task_type=task_type(kind),
        num_virtual_tokens=num_virtual_tokens,
        num_tasks=num_tasks,
        num_ranks=num_ranks,
        prompt_tuning_init=init,
        prompt_tuning_init_state_dict_path=init_path,
        prompt_tuning_init_task=init_task,
    )
    torch.manual_seed(seed)
    return get_peft_model(base, cfg)


def save_peft_bank(
    out: Path,
    kind: str = "seq2seq",
    dtype: str = "float32",
    safe: bool = True,
    *,
    num_tasks: int = 3,
    num_ranks: int = 2,
    num_virtual_tokens: int = 5,
    seed: int = 0,
) -> Path:
    """Save a PEFT MPT adapter whose factors are non-trivial (random, distinct per task) in ``dtype``,
    with PEFT's own ``save_pretrained``. Returns the adapter folder."""
    import torch

    model = peft_model(kind, num_tasks=num_tasks, num_ranks=num_ranks, num_virtual_tokens=num_virtual_tokens, seed=seed)
    enc = model.prompt_encoder["default"]
    g = torch.Generator().manual_seed(seed + 7)
    with torch.no_grad():
        enc.embedding.weight.copy_(torch.randn(enc.embedding.weight.shape, generator=g))
        enc.prefix_task_cols.copy_(
            torch.randn(enc.prefix_task_cols.shape, generator=g) * (1 + torch.arange(num_tasks)[:, None, None])
        )
        enc.prefix_task_rows.copy_(torch.randn(enc.prefix_task_rows.shape, generator=g) / 3)
    model.to(_dtypes()[dtype])
    model.save_pretrained(str(out), safe_serialization=safe)
    return Path(out)


def write_bank(path: Path, pe, cols, rows, names=None, extra_meta=None) -> Path:
    """A bare .safetensors bank written with the safetensors package (not mptkit)."""
    from safetensors.torch import save_file

    meta = {"format": "pt"}
    if names is not None:
        meta["mptkit.task_names"] = json.dumps(names)
    meta.update(extra_meta or {})
    save_file(
        {
            "prompt_embeddings": pe.contiguous(),
            "prefix_task_cols": cols.contiguous(),
            "prefix_task_rows": rows.contiguous(),
        },
        str(path),
        metadata=meta,
    )
    return Path(path)


def random_bank(path: Path, T=4, N=6, r=2, d=8, dtype=None, names=None, seed=0) -> Path:
    """A bare .safetensors bank of random normal tensors (float32 unless ``dtype``)."""
    import torch

    dtype = torch.float32 if dtype is None else dtype
    g = torch.Generator().manual_seed(seed)
    pe = torch.randn(N, d, generator=g).to(dtype)
    cols = torch.randn(T, N, r, generator=g).to(dtype)
    rows = torch.randn(T, r, d, generator=g).to(dtype)
    return write_bank(path, pe, cols, rows, names)


def memory_bank(T=3, N=4, r=2, d=6, dtype=None, names=None, seed=0, pe=None, config=None):
    """A PromptBank held in memory (no file), with random normal tensors (float32 unless ``dtype``)."""
    import torch

    from mptkit._bank import PromptBank
    from mptkit._tensor import Array

    dtype = torch.float32 if dtype is None else dtype
    g = torch.Generator().manual_seed(seed)
    pe = torch.randn(N, d, generator=g) if pe is None else pe
    cols = torch.randn(T, N, r, generator=g)
    rows = torch.randn(T, r, d, generator=g)
    tensors = {"prompt_embeddings": pe, "prefix_task_cols": cols, "prefix_task_rows": rows}
    return PromptBank({k: Array.from_torch(v.to(dtype)) for k, v in tensors.items()}, names, config)


def big_bank(path: Path, seed: int, *, N: int = 512, d: int = 16384, T: int = 32, r: int = 4) -> Path:
    """A bare .safetensors bank of about 42 MB (F32) written by the safetensors package, with a
    config hint so that it can also be saved as an adapter folder."""
    import torch

    g = torch.Generator().manual_seed(seed)
    meta = {"mptkit.config": json.dumps({"task_type": "CAUSAL_LM", "num_virtual_tokens": N})}
    return write_bank(
        Path(path),
        torch.randn(N, d, generator=g),
        torch.randn(T, N, r, generator=g),
        torch.randn(T, r, d, generator=g),
        extra_meta=meta,
    )


def medium_bank(path: Path, *, N: int = 64, d: int = 1024, T: int = 4, r: int = 2, seed: int = 3) -> Path:
    """A PEFT-style adapter folder (config + safetensors) of about 400 kB, made with mptkit.save
    from a bank written by the safetensors package."""
    import torch

    import mptkit

    path = Path(path)
    g = torch.Generator().manual_seed(seed)
    flat = path.with_name(path.name + ".src.safetensors")
    meta = {
        "mptkit.config": json.dumps(
            {"task_type": "CAUSAL_LM", "num_virtual_tokens": N, "num_transformer_submodules": 1}
        )
    }
    write_bank(
        flat,
        torch.randn(N, d, generator=g),
        torch.randn(T, N, r, generator=g),
        torch.randn(T, r, d, generator=g),
        names=[f"t{i}" for i in range(T)],
        extra_meta=meta,
    )
    mptkit.save(mptkit.load(flat), path)
    flat.unlink()
    return path


#: bytes an element of each safetensors dtype the sparse files use
_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2}


def sparse_safetensors(path, entries: dict, metadata: dict | None = None, data: dict | None = None) -> dict:
    """Write a safetensors file whose tensors are holes on disk (any size, no memory): ``entries``
    ``{name: (dtype, shape)}`` laid out in their order, ``data`` ``{name: bytes}`` written into
    their places. Returns ``{"data_start", "size", name: (begin, end) in the file}``. No torch needed."""
    header, pos = {"__metadata__": metadata or {"format": "pt"}}, 0
    for name, (dtype, shape) in entries.items():
        n = _ITEMSIZE[dtype] * math.prod(shape)
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [pos, pos + n]}
        pos += n
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    start = 8 + len(text)
    out = {"data_start": start, "size": start + pos}
    for name in entries:
        b, e = header[name]["data_offsets"]
        out[name] = (start + b, start + e)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        f.truncate(start + pos)
        for name, raw in (data or {}).items():
            f.seek(out[name][0])
            f.write(raw)
    return out


def sparse_bank(path, *, T: int, N: int, r: int, d: int, filled=(), seed: int = 0, names=None) -> dict:
    """Write a bare F32 bank of any size as a sparse file: a random shared prompt, random factors
    for the tasks in ``filled``, zeros (holes: no disk) everywhere else. Returns the byte layout
    ``{"header": n, "data_start", "size", tensor: (begin, end) in the file}``. No torch needed."""
    import numpy as np

    shapes = {"prefix_task_cols": (T, N, r), "prefix_task_rows": (T, r, d), "prompt_embeddings": (N, d)}
    meta = {"format": "pt"}
    if names is not None:
        meta["mptkit.task_names"] = json.dumps(names)
    out = sparse_safetensors(path, {k: ("F32", v) for k, v in shapes.items()}, meta)
    out["header"] = out["data_start"]
    rng = np.random.default_rng(seed)
    with open(path, "r+b") as f:
        f.seek(out["prompt_embeddings"][0])
        f.write(rng.standard_normal(N * d, dtype=np.float32).tobytes())
        for k in filled:
            f.seek(out["prefix_task_cols"][0] + k * N * r * 4)
            f.write(rng.standard_normal(N * r, dtype=np.float32).tobytes())
            f.seek(out["prefix_task_rows"][0] + k * r * d * 4)
            f.write(rng.standard_normal(r * d, dtype=np.float32).tobytes())
    return out


def stream_bank(path: Path, T: int, N: int, r: int, d: int, seed: int) -> None:
    """Stream a random F32 bank to ``path`` in the safetensors layout (tensors in name order), in
    chunks of 16 MB: a bank of any size in bounded memory, every value filled (unlike :func:`sparse_bank`)."""
    import torch

    sizes = {"prefix_task_cols": (T, N, r), "prefix_task_rows": (T, r, d), "prompt_embeddings": (N, d)}
    header, pos = {"__metadata__": {"format": "pt"}}, 0
    for name, shape in sizes.items():
        n = 4 * shape[0] * shape[1] * (shape[2] if len(shape) == 3 else 1)
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [pos, pos + n]}
        pos += n
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    g = torch.Generator().manual_seed(seed)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        for shape in sizes.values():
            per = max(1, (16 << 20) // (4 * (shape[1] * (shape[2] if len(shape) == 3 else 1))))
            for lo in range(0, shape[0], per):
                chunk = torch.randn((min(per, shape[0] - lo), *shape[1:]), generator=g) * 0.1
                f.write(chunk.numpy().tobytes())


def load_tensors(path) -> dict:
    """The tensors of a bare file or an adapter folder, via the safetensors package."""
    from safetensors.torch import load_file

    p = Path(path)
    if p.is_dir():
        p = p / "adapter_model.safetensors"
    return load_file(str(p))


def full_prompts(bank, dtype=None):
    """Every task's full prompt ``prompt_embeddings * (cols[k] @ rows[k])``, computed in ``dtype``
    (float64 unless given)."""
    import torch

    dtype = torch.float64 if dtype is None else dtype
    pe = bank.tensors["prompt_embeddings"].to_torch(dtype=dtype)
    cols = bank.tensors["prefix_task_cols"].to_torch(dtype=dtype)
    rows = bank.tensors["prefix_task_rows"].to_torch(dtype=dtype)
    return pe * torch.matmul(cols, rows)


def peft_load(folder, kind="seq2seq"):
    """``PeftModel.from_pretrained`` on a tiny base model; returns the MPT prompt encoder."""
    from peft import PeftModel

    model = PeftModel.from_pretrained(tiny_base_model(kind), str(folder))
    return model, model.prompt_encoder["default"]


def task_bytes(bank, k):
    """The bytes of task ``k`` of a bank: (the shared prompt, its rows of both factors)."""
    return (
        bytes(bank.tensors["prompt_embeddings"].read()),
        bytes(bank.tensors["prefix_task_cols"].rows([k]).read()),
        bytes(bank.tensors["prefix_task_rows"].rows([k]).read()),
    )
