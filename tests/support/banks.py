"""Helpers for the test suite: PEFT-saved banks from tiny models, synthetic banks, CLI runs."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def tiny_base_model(kind: str):
    """A tiny transformers model built from a config: "seq2seq" (T5, 2 submodules) or "causal" (GPT-2)."""
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
    model = peft_model(kind, num_tasks=num_tasks, num_ranks=num_ranks, num_virtual_tokens=num_virtual_tokens, seed=seed)
    enc = model.prompt_encoder["default"]
    g = torch.Generator().manual_seed(seed + 7)
    with torch.no_grad():
        enc.embedding.weight.copy_(torch.randn(enc.embedding.weight.shape, generator=g))
        enc.prefix_task_cols.copy_(
            torch.randn(enc.prefix_task_cols.shape, generator=g) * (1 + torch.arange(num_tasks)[:, None, None])
        )
        enc.prefix_task_rows.copy_(torch.randn(enc.prefix_task_rows.shape, generator=g) / 3)
    model.to(DTYPES[dtype])
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


def random_bank(path: Path, T=4, N=6, r=2, d=8, dtype=torch.float32, names=None, seed=0) -> Path:
    g = torch.Generator().manual_seed(seed)
    pe = torch.randn(N, d, generator=g).to(dtype)
    cols = torch.randn(T, N, r, generator=g).to(dtype)
    rows = torch.randn(T, r, d, generator=g).to(dtype)
    return write_bank(path, pe, cols, rows, names)


def load_tensors(path) -> dict:
    """The tensors of a bare file or an adapter folder, via the safetensors package."""
    from safetensors.torch import load_file

    p = Path(path)
    if p.is_dir():
        p = p / "adapter_model.safetensors"
    return load_file(str(p))


def sha256_tree(path) -> str:
    """A digest of a file or of every file under a folder (names and bytes)."""
    p = Path(path)
    h = hashlib.sha256()
    files = [p] if p.is_file() else sorted(x for x in p.rglob("*") if x.is_file())
    for f in files:
        h.update(str(f.relative_to(p.parent)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def run_mptkit(*args, env=None, cwd=None, timeout=120) -> subprocess.CompletedProcess:
    """Run ``python -m mptkit ARGS`` as a separate process (real exit codes, real imports)."""
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "mptkit", *map(str, args)],
        capture_output=True,
        text=True,
        env=e,
        cwd=cwd,
        timeout=timeout,
    )


def memory_bank(T=3, N=4, r=2, d=6, dtype=torch.float32, names=None, seed=0, pe=None, config=None):
    """A PromptBank held in memory (no file), with random normal tensors."""
    from mptkit._bank import PromptBank
    from mptkit._tensor import Array

    g = torch.Generator().manual_seed(seed)
    pe = torch.randn(N, d, generator=g) if pe is None else pe
    cols = torch.randn(T, N, r, generator=g)
    rows = torch.randn(T, r, d, generator=g)
    tensors = {"prompt_embeddings": pe, "prefix_task_cols": cols, "prefix_task_rows": rows}
    return PromptBank({k: Array.from_torch(v.to(dtype)) for k, v in tensors.items()}, names, config)


def full_prompts(bank, dtype=torch.float64):
    """Every task's full prompt ``prompt_embeddings * (cols[k] @ rows[k])``, computed in ``dtype``."""
    pe = bank.tensors["prompt_embeddings"].to_torch(dtype=dtype)
    cols = bank.tensors["prefix_task_cols"].to_torch(dtype=dtype)
    rows = bank.tensors["prefix_task_rows"].to_torch(dtype=dtype)
    return pe * torch.matmul(cols, rows)


def peft_load(folder, kind="seq2seq"):
    """``PeftModel.from_pretrained`` on a tiny base model; returns the MPT prompt encoder."""
    from peft import PeftModel

    model = PeftModel.from_pretrained(tiny_base_model(kind), str(folder))
    return model, model.prompt_encoder["default"]


# -- one helper for each thing the tests check over and over -----------------------------------------------
def _code(result) -> int:
    return result.exit_code if hasattr(result, "exit_code") else result.returncode


def error_lines(result, *words, where: str | None = None) -> list[str]:
    """The run failed as every user mistake must: exit status 2, no traceback, no internal error, and
    every stderr line an ``mptkit: error:`` sentence (naming ``where`` when given); ``words`` all appear.
    Works on click results and on finished subprocesses. Returns the lines."""
    err = result.stderr
    assert _code(result) == 2, (_code(result), result.stdout, err)
    assert "Traceback" not in err and "internal error" not in err, err
    lines = [x for x in err.splitlines() if x.strip()]
    assert lines and all(x.startswith("mptkit: error: ") for x in lines), err
    if where is not None:
        assert all(str(where) in x for x in lines), (where, err)
    for w in words:
        assert w in err, (w, err)
    return lines


def one_error(result, *words, where: str | None = None) -> str:
    """:func:`error_lines`, and there is exactly one line; returns it."""
    lines = error_lines(result, *words, where=where)
    assert len(lines) == 1, result.stderr
    return lines[0]


_REPORT = """
import atexit, sys
atexit.register(lambda: print("LOADED", ",".join(m for m in {watch!r} if m in sys.modules) or "-", file=sys.stderr))
"""
_RUN_CLI = """
from mptkit.cli import main
main(sys.argv[1:])
"""
WATCHED = ("torch", "numpy", "huggingface_hub", "transformers", "peft", "jsonschema", "matplotlib")


def loaded_by(code: str, *argv, watch=WATCHED, env=None, cwd=None) -> tuple[subprocess.CompletedProcess, set[str]]:
    """Run Python ``code`` (with ``argv``) in a fresh interpreter; the finished process and which of
    ``watch`` it had imported when it exited (the probe that proves what a command never imports)."""
    e = dict(os.environ)
    e.update(env or {})
    r = subprocess.run(
        [sys.executable, "-c", _REPORT.format(watch=tuple(watch)) + code, *map(str, argv)],
        capture_output=True,
        text=True,
        env=e,
        cwd=cwd,
        timeout=120,
    )
    line = [x for x in r.stderr.splitlines() if x.startswith("LOADED ")]
    assert line, r.stderr
    mods = line[-1].split(" ", 1)[1]
    return r, (set() if mods == "-" else set(mods.split(",")))


def loaded_modules(*argv, **kw) -> tuple[int, set[str]]:
    """Run ``mptkit ARGV`` in a fresh interpreter; its exit code and which watched modules it imported."""
    r, mods = loaded_by(_RUN_CLI, *argv, **kw)
    return r.returncode, mods


def run_on_terminal(cmd, env, *, stdout_too: bool = False, cols: int = 100, when=None) -> tuple[int, str, str]:
    """Run ``cmd`` with stderr (and stdout with ``stdout_too``) on a pseudo-terminal ``cols`` wide
    (a new one has 0 columns), reading it until the child closes it. ``when`` = (compiled pattern,
    action): ``action(proc)`` runs once, as soon as the terminal text matches. Returns (exit status,
    stdout when it was a pipe else "", the terminal text)."""
    import fcntl
    import pty
    import struct
    import termios

    main_fd, sub_fd = pty.openpty()
    fcntl.ioctl(sub_fd, termios.TIOCSWINSZ, struct.pack("HHHH", 24, cols, 0, 0))
    proc = subprocess.Popen(
        [str(c) for c in cmd],
        stdin=sub_fd if stdout_too else subprocess.DEVNULL,
        stdout=sub_fd if stdout_too else subprocess.PIPE,
        stderr=sub_fd,
        env=env,
    )
    os.close(sub_fd)
    seen = b""
    while True:
        try:
            chunk = os.read(main_fd, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
        if when is not None and when[0].search(seen.decode(errors="replace")):
            when[1](proc)
            when = None
    os.close(main_fd)
    out = "" if stdout_too else proc.stdout.read().decode()
    if not stdout_too:
        proc.stdout.close()
    return proc.wait(timeout=120), out, seen.decode(errors="replace")
