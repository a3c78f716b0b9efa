"""What ``inspect`` and ``validate`` report about a bank: header facts and value statistics."""

from __future__ import annotations

from . import _numerics as numerics, _progress as progress
from ._bank import PromptBank


def summary(bank: PromptBank) -> dict:
    """Header-level facts: format, shapes, names, parameter counts, metadata, provenance."""
    N, d, T, r = bank.num_tokens, bank.token_dim, bank.num_tasks, bank.rank
    cfg = bank.config or {}
    shared = N * d
    per_task = (N * r + r * d) if r else 0
    total = shared + T * per_task
    out = {
        "path": bank.source.path if bank.source else None,
        "format": bank.source.format if bank.source else None,
        "file": bank.source.data_file if bank.source else None,
        "file_size": bank.source.file_size if bank.source else None,
        "kind": "shared-only" if bank.shared_only else ("single-task" if T == 1 else "bank"),
        "dtype": bank.dtype,
        "num_tasks": T,
        "num_virtual_tokens": bank.num_virtual_tokens,
        "num_transformer_submodules": bank.num_submodules,
        "N": N,
        "rank": r,
        "d": d,
        "task_type": cfg.get("task_type"),
        "base_model": cfg.get("base_model_name_or_path"),
        "task_names": bank.task_names,
        "parameters": {
            "shared": shared,
            "per_task": per_task,
            "total": total,
            "as_separate_prompts": T * shared,
            "saving": (1 - total / (T * shared)) if T else None,
        },
        "tensors": {k: {"dtype": a.dtype, "shape": list(a.shape)} for k, a in bank.tensors.items()},
        "metadata": bank.metadata,
        "provenance": bank.provenance,
        "notes": bank.notes,
        **peft_releases(bank),
    }
    serving = serving_warning(bank)
    if serving:
        out["serving"] = serving
    return out


def peft_releases(bank: PromptBank) -> dict:
    """Which PEFT releases load the bank: an adapter folder's config (``peft_versions``, see
    :func:`mptkit._peftfields.loadable`), or a bare file as a source-task init file
    (``init_file``, see :func:`mptkit._peftfields.init_file`)."""
    from . import _peftfields as fields

    if fields.has_dialect(bank.config):
        return {"peft_versions": fields.loadable(bank.config)}
    data = (bank.source.data_file or "") if bank.source else ""
    if bank.source and bank.source.format in ("safetensors", "pickle"):  # PEFT reads the bare keys only
        return {"init_file": fields.init_file(data.lower().endswith(".safetensors"))}
    return {}


def serving_warning(bank: PromptBank) -> dict | None:
    """For an MPT adapter folder: engines that take a PEFT folder read its ``prompt_embeddings``,
    which in an MPT folder is the shared prompt, so they would serve every task the wrong prompt
    without a word. The field says so and names the exports that give real per-task prompts."""
    fmt = bank.source.format if bank.source else ""
    if not fmt.startswith("peft-adapter") or bank.shared_only:
        return None
    import shlex

    path = shlex.quote(bank.source.path)
    return {
        "prompt_embeddings_is": "the shared prompt",
        "engines_reading_it": ["TGIS (PEFT prefix folders)", "TensorRT-LLM prompt adapters", "vLLM before 0.10"],
        "per_task": {
            "tgis": f"mptkit export {path} --all --format tgis -o DIR",
            "prompt_tuning": f"mptkit export {path} --all -o DIR",
            "prompt_table": f"mptkit export {path} --all -o TABLE.npy",
            "vllm": "mptkit.serve.PromptEmbedder",
        },
    }


def serving_sentence(serving: dict) -> str:
    """The warning :func:`serving_warning` describes, as one sentence."""
    per = serving["per_task"]
    return (
        "engines that load a PEFT folder's prompt_embeddings (TGIS, TensorRT-LLM, vLLM before 0.10) would serve "
        "this MPT folder's shared prompt to every task, silently; give them real per-task prompts with "
        f"`{per['tgis']}` (TGIS), `{per['prompt_tuning']}` (a PROMPT_TUNING folder per task) or "
        f"{per['vllm']} (vLLM)"
    )


#: bytes of factors read at a time, and of float64 prompt rows computed at a time, by value_stats
VALUES_CHUNK_BYTES = 16 << 20


def value_stats(bank: PromptBank) -> dict:
    """Reads the data (numpy): non-finite counts per tensor and per task, per-task norms of the
    factors and of the full prompt ``prompt_embeddings * (cols[k] @ rows[k])`` (computed in
    float64). Memory stays bounded whatever the bank's size: factors are read a chunk of tasks at a
    time and each prompt is computed a block of tokens at a time (:data:`VALUES_CHUNK_BYTES`).

    Overflow and invalid operations are expected here (a bank of huge or non-finite values is what
    ``--values`` is for): their results are checked and counted below, so numpy's warnings about
    them (``RuntimeWarning`` lines on stderr) are turned off by name for this computation."""
    import numpy as np

    with np.errstate(over="ignore", invalid="ignore"):
        return _value_stats(bank)


def _value_stats(bank: PromptBank) -> dict:
    import numpy as np

    pe_a = bank.tensors["prompt_embeddings"]
    pe = numerics.as_float(pe_a.read(), pe_a.dtype, pe_a.numel).reshape(pe_a.shape)
    pe_norm, pe_bad = _norm_and_nonfinite(pe)
    out = {"nonfinite": {"prompt_embeddings": pe_bad}, "tasks": [], "prompt_embeddings_norm": pe_norm}
    if bank.shared_only:
        return out
    cols_a, rows_a = bank.tensors["prefix_task_cols"], bank.tensors["prefix_task_rows"]
    T, (N, d), r = bank.num_tasks, pe.shape, bank.rank
    # For small ranks the prompt's norm comes without materialising it:
    # ||pe * (C @ R)||^2 = sum_{a,b} sum_i C[i,a] C[i,b] (pe**2 @ (R[a] * R[b]))[i], one matrix
    # product for a chunk of tasks; measured 6x faster than computing the prompt at rank 1
    ia, ib = [a for a in range(r) for b in range(a, r)], [b for a in range(r) for b in range(a, r)]
    gram = len(ia) <= 2 * r + 6
    pe2 = np.square(pe, dtype=np.float64) if gram else None
    pe64 = pe.astype(np.float64)
    weight = np.array([1.0 if x == y else 2.0 for x, y in zip(ia, ib)])
    per_task = cols_a.row_nbytes + rows_a.row_nbytes + (8 * len(ia) * d if gram else 0)
    step = max(1, VALUES_CHUNK_BYTES // max(per_task, 1))
    tokens = max(1, VALUES_CHUNK_BYTES // (8 * max(d, 1)))
    bad_cols = bad_rows = 0
    names = bank.names()
    with progress.bar(T, "values") as bar:
        for lo in range(0, T, step):
            idx = list(range(lo, min(lo + step, T)))
            cols = numerics.as_float(cols_a.rows(idx).read(), cols_a.dtype, len(idx) * N * r).reshape(len(idx), N, r)
            rows = numerics.as_float(rows_a.rows(idx).read(), rows_a.dtype, len(idx) * r * d).reshape(len(idx), r, d)
            sqs = None
            if gram:
                rr = rows[:, ia].astype(np.float64) * rows[:, ib]  # (t, P, d)
                G = (pe2 @ rr.reshape(-1, d).T).reshape(N, len(idx), len(ia))  # (N, t, P)
                cc = cols[:, :, ia].astype(np.float64) * cols[:, :, ib] * weight  # (t, N, P)
                sqs = np.einsum("tnp,ntp->t", cc, G)
            for j, k in enumerate(idx):
                c, rw = cols[j].astype(np.float64), rows[j].astype(np.float64)
                (c_norm, nc), (r_norm, nr) = _norm_and_nonfinite(c), _norm_and_nonfinite(rw)
                if sqs is not None and np.isfinite(sqs[j]) and sqs[j] >= 0:
                    norm, bad = float(np.sqrt(sqs[j])), 0
                else:
                    norm, bad = _prompt_norm(pe64, c, rw, tokens)
                bad_cols += nc
                bad_rows += nr
                out["tasks"].append(
                    {
                        "task": k,
                        "name": names[k],
                        "cols_norm": c_norm,
                        "rows_norm": r_norm,
                        "prompt_norm": norm,
                        "nonfinite_cols": nc,
                        "nonfinite_rows": nr,
                        "nonfinite_prompt": bad,
                    }
                )
            bar.update(len(idx))
    out["nonfinite"]["prefix_task_cols"] = bad_cols
    out["nonfinite"]["prefix_task_rows"] = bad_rows
    return out


def _prompt_norm(pe, c, rw, tokens: int) -> tuple[float, int]:
    """The norm and non-finite count of ``pe * (c @ rw)`` (``pe`` float64), computed (float64) a
    block of tokens at a time into one reused buffer."""
    import numpy as np

    norms, bad = [], 0
    buf = np.empty((min(tokens, len(c)), rw.shape[1]))
    for t0 in range(0, len(c), tokens):
        n = min(tokens, len(c) - t0)
        block = np.matmul(c[t0 : t0 + n], rw, out=buf[:n])
        np.multiply(block, pe[t0 : t0 + n], out=block)
        norm, nbad = _norm_and_nonfinite(block)
        norms.append(norm)
        bad += nbad
    # the blocks' norms combined (NaN when any block holds a NaN, Inf when one is infinite); scaled by
    # the largest, so that finite norms whose squares overflow still give a finite norm
    return _combine_norms(np.array(norms)), bad


def _combine_norms(norms) -> float:
    """The norm of a vector made of parts whose norms are ``norms`` (float64 array)."""
    import numpy as np

    if np.isnan(norms).any():
        return float("nan")
    top = float(norms.max(initial=0.0))
    if top == 0.0 or not np.isfinite(top):
        return top
    return top * float(np.sqrt(np.dot(norms / top, norms / top)))


def _norm_and_nonfinite(x) -> tuple[float, int]:
    """The Euclidean norm of ``x`` (in float64) and how many of its values are NaN or infinite;
    counting happens only when the sum of squares is not finite, which a finite array rarely gives."""
    import numpy as np

    flat = x.reshape(-1)
    sq = float(np.dot(flat, flat)) if flat.dtype == np.float64 else float(np.dot(f := flat.astype(np.float64), f))
    if np.isfinite(sq):
        return float(np.sqrt(sq)), 0
    bad = int(np.count_nonzero(~np.isfinite(flat)))
    if bad:
        return float("nan") if np.isnan(flat).any() else float("inf"), bad
    scale = float(np.abs(flat).max())  # finite values whose squares overflow
    scaled = flat.astype(np.float64) / scale
    return scale * float(np.sqrt(np.dot(scaled, scaled))), 0
