"""TGIS prefix stores (format ``tgis``, written only when named: ``--format tgis``): the folder IBM's
text-generation-inference server (TGIS, which caikit-nlp feeds) reads prompt-tuning prefixes from
(``PREFIX_STORE_PATH``).

TGIS loads prefix ``<id>`` from ``PREFIX_STORE_PATH/<id>/decoder.pt`` (decoder-only models) or
``encoder.pt`` and/or ``decoder.pt`` (encoder-decoder models) with ``torch.load(weights_only=True)``:
a 2-D tensor of 1 to max-length rows, as wide as the model's hidden size, finite after the cast to
the model's dtype, with an even number of rows for encoder-decoder models; prefix ids must match
``[/\\w-]+`` and stay inside the store (text-generation-inference's
``server/text_generation_server/prompt_cache.py``). A folder that holds ``adapter_model.*`` is read
as a PEFT folder instead, whose ``prompt_embeddings`` is the *shared* prompt of an MPT bank: a store
written here never holds one.

It writes a :class:`~mptkit.formats.PromptTable` (``mptkit.export_table``): one folder per task,
named by the task's name, holding the rows the table holds: a causal bank's whole prompt in
``decoder.pt``; a seq2seq bank's encoder half in ``encoder.pt`` (the default half: what caikit-nlp
writes and PEFT's ``generate`` uses), its decoder half in ``decoder.pt``, or both, each where PEFT's
``forward`` puts it. ``tasks.json`` beside the folders maps them to the bank's tasks.
"""

from __future__ import annotations

import io
import json
import os
import re
import stat
from pathlib import Path

from ..errors import UsageError
from ._registry import Format
from ._targets import NAME_MAX, os_error_reason

#: TGIS's own rule for a prefix id (``VALID_PREFIX_ID_PATTERN``, matched in full)
PREFIX_ID = re.compile(r"[/\w\-]+")
ENCODER_FILE, DECODER_FILE = "encoder.pt", "decoder.pt"
#: the store's list of prefixes and where they came from (TGIS never reads it: ids have no '.')
MANIFEST = "tasks.json"


def prefix_id_problem(name: str) -> str | None:
    """Why TGIS could not serve a prefix named ``name`` from a store folder of that name, or None.
    TGIS accepts ``[/\\w-]+``; mptkit also refuses what would not make a plain sub-folder of the
    store (an empty part: a leading, trailing or doubled '/') or what the file system cannot name."""
    if not PREFIX_ID.fullmatch(name):
        bad = sorted({c for c in name if not PREFIX_ID.fullmatch(c)})
        shown = ", ".join(repr(c) for c in bad[:5])
        return f"holds {shown}, which TGIS refuses in a prefix id (it takes letters, digits, '_', '-' and '/')"
    parts = name.split("/")
    if any(p == "" for p in parts):
        return "has an empty part (a leading, trailing or doubled '/'), which would not name a folder in the store"
    long = next((p for p in parts if len(os.fsencode(p)) > NAME_MAX), None)
    if long is not None:
        return f"has a part of {len(os.fsencode(long))} bytes; file systems allow {NAME_MAX} bytes per name"
    return None


def _tasks(table) -> list[int]:
    """The bank indices of the table's tasks (from its provenance), else 0, 1, ..."""
    args = (table.provenance[-1] if table.provenance else {}).get("arguments") or {}
    idx = args.get("tasks")
    return list(idx) if isinstance(idx, list) and len(idx) == len(table.names) else list(range(len(table.names)))


def files_of(table) -> dict[str, slice]:
    """Which rows of each table row (a task's N rows, or the half it holds) go into which file."""
    n, half = table.shape[1], table.info.get("half")
    if half is None:  # a causal bank (or one whose split is unknown): the whole prompt
        return {DECODER_FILE: slice(0, n)}
    if half == "both":
        return {ENCODER_FILE: slice(0, n // 2), DECODER_FILE: slice(n // 2, n)}
    return {ENCODER_FILE if half == "encoder" else DECODER_FILE: slice(0, n)}


def check_store(table, path: Path) -> None:
    """Refuse, all at once and before any work, task names TGIS would not serve, or that two tasks
    would share (also on a case-insensitive file system): no task name chooses a path TGIS refuses."""
    problems, seen = [], {}
    for k, name in zip(_tasks(table), table.names):
        why = prefix_id_problem(name)
        if why:
            problems.append(f"task {k} {name!r} {why}")
            continue
        key = name.casefold()
        if key in seen:
            problems.append(
                f"tasks {seen[key]} and {k} would share the folder {name!r} (names differing only in case are one "
                "folder on case-insensitive file systems)"
            )
        seen.setdefault(key, k)
    if problems:
        fix = (
            "; rename the tasks (mptkit rename BANK --names ...) or leave them out (--tasks), so that no task name "
            "chooses a path TGIS would refuse"
        )
        where = f"{path} (--format tgis)"
        raise UsageError(
            f"{where}: {problems[0]}{fix}", [f"{where}: {p}" for p in problems[:-1]] + [f"{where}: {problems[-1]}{fix}"]
        )


def store_warnings(table) -> list[str]:
    """TGIS refuses an encoder-decoder prefix of odd length: said before the store is written."""
    files = files_of(table)
    if table.info.get("half") is None:
        return []
    rows = {f: s.stop - s.start for f, s in files.items()}
    odd = {f: n for f, n in rows.items() if n % 2}
    if not odd:
        return []
    shown = ", ".join(f"{f} {n}" for f, n in odd.items())
    return [
        f"each prefix file holds an odd number of rows ({shown}: num_virtual_tokens); TGIS refuses encoder-decoder "
        "prefixes of odd length (its prompt cache checks prefix.shape[0] % 2), so it will not load these"
    ]


def replaceable_store(target: Path, folder: bool) -> str | None:
    """What ``--force`` may replace with a store: an empty folder, or one holding only what this
    module writes (prefix folders of ``encoder.pt``/``decoder.pt``, and :data:`MANIFEST`)."""
    try:
        entries = sorted(os.listdir(target))
    except OSError as e:
        return f"cannot be listed ({os_error_reason(e)})"
    if entries and MANIFEST not in entries:
        return "is not a TGIS prefix store mptkit wrote (no tasks.json)"
    for root, dirs, files in os.walk(target):
        for f in files:
            p = Path(root, f)
            ok = f in (ENCODER_FILE, DECODER_FILE) or (f == MANIFEST and Path(root) == target)
            if not ok or not stat.S_ISREG(os.lstat(p).st_mode):
                return f"holds {p.relative_to(target)}, which is not part of a TGIS prefix store"
        for d in dirs:
            if os.path.islink(Path(root, d)):
                return f"holds the link {Path(root, d).relative_to(target)}, which is not part of a TGIS prefix store"
    return None


def write_tgis_store(table, tmp: Path, target: Path) -> None:
    """Fill ``tmp`` (the temporary folder the output plan installs at ``target``) with the store:
    each task's folder and files, each tensor saved by ``torch.save`` (a tensor that owns exactly its
    rows, so the file holds nothing else); then :data:`MANIFEST`. A prompt with NaN or infinite
    values in the stored dtype is refused, and the plan then leaves nothing at ``target``."""
    import torch

    from .._dtypes import shown, torch_dtype

    T, n, d = table.shape
    files, idx = files_of(table), _tasks(table)
    tdtype, i = torch_dtype(table.dtype), 0
    for raw in table.chunks():
        block = torch.frombuffer(bytearray(raw), dtype=tdtype).reshape(-1, n, d)
        for prompt in block:
            bad = int((~torch.isfinite(prompt)).sum())
            if bad:
                raise UsageError(
                    f"{target}: task {idx[i]} ({table.names[i]}) has {bad} non-finite values in its prompt in "
                    f"{shown(table.dtype)}; TGIS refuses non-finite prefixes, so nothing was written"
                )
            folder = tmp.joinpath(*table.names[i].split("/"))
            folder.mkdir(parents=True, exist_ok=True)
            for name, rows in files.items():
                buf = io.BytesIO()  # torch's zip writer turns a full disk into a RuntimeError: write it here
                torch.save(prompt[rows].clone(), buf)
                with open(folder / name, "xb") as f:
                    f.write(buf.getbuffer())
            i += 1
    if i != T:  # a bug, not the user's mistake: never leave a short store behind
        raise RuntimeError(f"TGIS store: wrote {i} prefixes, expected {T}")
    manifest = {
        "format": "TGIS prefix store (PREFIX_STORE_PATH)",
        "model": "decoder-only" if table.info.get("half") is None else "encoder-decoder",
        "half": table.info.get("half"),
        "dtype": table.dtype,
        "rows": {f: [s.start, s.stop] for f, s in files.items()},
        "tasks": [{"prefix_id": name, "task": k} for k, name in zip(idx, table.names)],
        "source": table.info.get("source"),
        "provenance": table.provenance,
    }
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


FORMAT = Format(
    name="tgis",
    description="a TGIS prefix store: a folder per task holding decoder.pt or encoder.pt/decoder.pt",
    label="a TGIS prefix store",
    writes="prompts",
    folder=True,
    by_suffix=False,
    write=write_tgis_store,
    check=check_store,
    warnings=store_warnings,
    replaceable=replaceable_store,
)
