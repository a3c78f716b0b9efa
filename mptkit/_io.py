"""Where banks come from and go to: :func:`load` reads a local path (:mod:`mptkit.formats`) or an
``hf://`` reference (:mod:`mptkit.hub`), :func:`save` writes any output (a bank, an adapter, a
prompt table, an image) through the one output plan, :func:`validate` says whether a path holds a
valid bank without raising."""

from __future__ import annotations

import os
import re

from ._bank import PromptBank
from ._info import peft_releases, serving_warning, summary, value_stats
from .errors import MptkitError
from .formats import plan, read_bank, save

__all__ = ["load", "save", "plan", "validate", "load_embeddings"]


def load(path: str | os.PathLike, *, kind: str | None = None, adapter: str | None = None) -> PromptBank:
    """A :class:`PromptBank` from any form mptkit reads: a ``.safetensors`` file, a PEFT adapter
    folder, a whole-model, prompt-encoder or wrapped state dict (``.safetensors`` or a ``.bin``/``.pt``
    pickle, weights only), a sharded whole-model folder or ``hf://owner/repo[@revision][/path]``;
    tensors stay on disk until read. ``kind`` forces a schema ("bank", "task", "shared");
    ``adapter`` picks one of several adapters (required when there are several)."""
    name = os.fspath(path)
    if name.startswith("hf://"):  # the header and the bytes an operation reads, not the whole bank
        from .hub import open_bank

        bank = open_bank(name, kind=kind, adapter=adapter)
    else:
        if not os.path.lexists(name) and _REPO_SHAPE.match(name):
            from .errors import InvalidBank

            raise InvalidBank(
                f"{name}: no such file or folder; for the Hub repo {name.split('@')[0]}, write hf://{name}"
            )
        bank = read_bank(name, kind=kind, adapter=adapter)
    if adapter and bank.source is not None:
        bank.source.adapter = adapter  # provenance records it, to read the same adapter again (verify)
    return bank


def load_embeddings(base_model: str | os.PathLike, *, embedding_key: str | None = None):
    """The input-embedding matrix of ``base_model`` (a model folder, a ``model.safetensors``, a
    sharded index or ``hf://owner/model[@revision][/path]``), found by its config and the usual
    names and read lazily: only that tensor, by byte range from the Hub
    (:class:`mptkit.formats._embeddings.InputEmbeddings`)."""
    name = os.fspath(base_model)
    if name.startswith("hf://"):
        from .hub._basemodel import open_embeddings

        return open_embeddings(name, key=embedding_key)
    from .formats._embeddings import open_local

    return open_local(name, key=embedding_key)


#: what a Hub repo id looks like (``owner/repo`` or ``owner/repo@rev``), for the hint above
_REPO_SHAPE = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*(@[\w./%-]+)?$")


def validate(path: str | os.PathLike, values: bool = False, adapter: str | None = None) -> dict:
    """``{"path", "valid", "problems", "warnings", ...}`` for one path; never raises for a bad bank.
    ``warnings`` say what PEFT would read or refuse when loading the adapter (the bank is valid);
    ``peft_versions`` which PEFT releases load an adapter folder, ``init_file`` which use a bare
    file as an init file (:func:`mptkit._info.peft_releases`)."""
    try:
        bank = load(path, adapter=adapter)
    except MptkitError as e:  # an invalid bank, or one that cannot be fetched (hf://)
        return {"path": os.fspath(path), "valid": False, "problems": e.problems}
    report = {
        "path": os.fspath(path),
        "valid": True,
        "problems": [],
        "kind": summary(bank)["kind"],
        "warnings": [n.removeprefix("warning: ") for n in bank.notes if n.startswith("warning: ")],
        **peft_releases(bank),
    }
    serving = serving_warning(bank)
    if serving:
        report["serving"] = serving
    if values:
        stats = value_stats(bank)
        for name, n in stats["nonfinite"].items():
            if n:
                report["problems"].append(f"{path}: tensor '{name}' holds {n} NaN/Inf values")
        for t in stats["tasks"]:
            if t["nonfinite_cols"] or t["nonfinite_rows"] or t["nonfinite_prompt"]:
                report["problems"].append(
                    f"{path}: task {t['task']}"
                    + (f" ({t['name']})" if t["name"] != str(t["task"]) else "")
                    + " has non-finite values: "
                    f"{t['nonfinite_cols']} in prefix_task_cols, {t['nonfinite_rows']} in prefix_task_rows, "
                    f"{t['nonfinite_prompt']} in its full prompt"
                )
        report["valid"] = not report["problems"]
        report["nonfinite"] = stats["nonfinite"]
    return report
