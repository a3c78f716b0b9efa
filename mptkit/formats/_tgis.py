"""TGIS prefix stores: the folder IBM's text-generation-inference server (TGIS, which caikit-nlp
feeds) reads prompt-tuning prefixes from (``PREFIX_STORE_PATH``).

TGIS loads prefix ``<id>`` from ``PREFIX_STORE_PATH/<id>/decoder.pt`` (decoder-only models) or
``encoder.pt`` and/or ``decoder.pt`` (encoder-decoder models) with ``torch.load(weights_only=True)``:
a 2-D tensor of 1 to max-length rows, as wide as the model's hidden size, finite after the cast to
the model's dtype, with an even number of rows for encoder-decoder models; prefix ids must match
``[/\\w-]+`` and stay inside the store (text-generation-inference's
``server/text_generation_server/prompt_cache.py``). A folder that holds ``adapter_model.*`` is read
as a PEFT folder instead, whose ``prompt_embeddings`` is the *shared* prompt of an MPT bank: a store
written here never holds one.

The store is written atomically: :func:`write_tgis_store` fills the temp folder that
:func:`mptkit.formats._atomic.atomic_dir` gives, after the caller has checked the target.
"""

from __future__ import annotations

import io
import json
import os
import re
import stat
from collections.abc import Iterable
from pathlib import Path

from ..errors import UsageError
from . import _atomic as atomic
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


def check_prefix_ids(ids: list[tuple[int, str]], where: str) -> None:
    """Refuse, all at once, task names (``(index, name)``) that TGIS would not serve or that two
    tasks would share (also on a case-insensitive file system, or one folder inside another's
    files)."""
    problems, seen = [], {}
    for k, name in ids:
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
        raise UsageError(
            f"{where}: {problems[0]}{fix}", [f"{where}: {p}" for p in problems[:-1]] + [f"{where}: {problems[-1]}{fix}"]
        )


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


def write_tgis_store(target: Path, prefixes: Iterable[tuple[str, dict]], manifest: dict, *, force: bool) -> Path:
    """Write a TGIS prefix store at ``target`` (already checked), atomically: for each
    ``(prefix_id, {file name: 2-D tensor})`` of ``prefixes`` (consumed once: an error raised while
    computing one leaves nothing written), the folder ``prefix_id`` with each tensor saved by
    ``torch.save`` (a tensor that owns exactly its rows, so the file holds nothing else); then
    :data:`MANIFEST`. Returns ``target``."""
    import torch

    with atomic.atomic_dir(target, replace=force) as tmp:
        for pid, files in prefixes:
            folder = tmp.joinpath(*pid.split("/"))
            folder.mkdir(parents=True, exist_ok=True)
            for name, t in files.items():
                buf = io.BytesIO()  # torch's zip writer turns a full disk into a RuntimeError: write it here
                torch.save(t.detach().to("cpu").contiguous().clone(), buf)
                with open(folder / name, "xb") as f:
                    f.write(buf.getbuffer())
        text = json.dumps(manifest, indent=2, ensure_ascii=False) + "\n"
        (tmp / MANIFEST).write_text(text, encoding="utf-8")
    return target
