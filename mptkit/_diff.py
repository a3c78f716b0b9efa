"""How two banks differ: configs field by field, task names, shapes and dtypes, the shared prompt,
and each task matched by name (by index when either bank names none).

A task is ``identical`` when its factors' bytes and the shared prompts' bytes are equal: that is
decided on bytes alone and no prompt is computed. Otherwise both full prompts
``prompt_embeddings * (cols[k] @ rows[k])`` are computed in float64 from the stored values, one task
at a time, and compared: ``same prompt`` when equal (a zero-padded rank, say), else ``differs`` with
the relative error ``||B - A|| / ||A||`` and the largest absolute difference. Tasks of one bank
whose name the other lacks are ``only in A`` / ``only in B``, or ``renamed`` when the other holds
the same bytes under another name.
"""

from __future__ import annotations

import hashlib

from ._bank import KEYS, PromptBank

#: bytes of factor rows compared at a time, and of float64 prompts computed at a time
CHUNK_BYTES = 32 << 20
STATUSES = ("identical", "same prompt", "differs", "renamed", "only in A", "only in B")


def diff(a: PromptBank, b: PromptBank) -> dict:
    """The differences between ``a`` and ``b`` (see the module doc). ``same`` is True when nothing
    differs: config, names and their order, shapes, dtypes, the shared prompt and every task."""
    cmp = _Comparer(a, b)
    config = _config_diff(a.config or {}, b.config or {})
    tensors = [{"tensor": k, "a": _shape(a, k), "b": _shape(b, k)} for k in KEYS if _shape(a, k) != _shape(b, k)]
    shared = cmp.shared()
    tasks = cmp.tasks() if not (a.shared_only or b.shared_only) else []
    names_equal = a.task_names == b.task_names
    same = (
        not config
        and not tensors
        and names_equal
        and shared["status"] == "identical"
        and all(t["status"] == "identical" for t in tasks)
    )
    return {
        "same": same,
        "a": a.where,
        "b": b.where,
        "config": config,
        "task_names": None if names_equal else {"a": a.task_names, "b": b.task_names},
        "tensors": tensors,
        "shared": shared,
        "matched_by": cmp.by,
        "tasks": tasks,
        "bytes_compared": cmp.bytes,
        "prompts_computed": cmp.prompts,
    }


def task_differences(a: PromptBank, b: PromptBank) -> list[dict]:
    """Each task of ``a`` against the task of ``b`` at the same index (banks of one task count):
    what :func:`mptkit._verify` reports for a rebuilt bank."""
    cmp = _Comparer(a, b)
    cmp.by = "index"
    return [t for t in cmp.tasks() if t["status"] != "identical"]


def _shape(bank: PromptBank, key: str):
    arr = bank.tensors.get(key)
    return None if arr is None else {"shape": list(arr.shape), "dtype": arr.dtype}


def _config_diff(a: dict, b: dict) -> list[dict]:
    missing = object()
    out = []
    for k in list(a) + [k for k in b if k not in a]:
        va, vb = a.get(k, missing), b.get(k, missing)
        if va != vb or type(va) is not type(vb):
            out.append({"field": k, "a": None if va is missing else va, "b": None if vb is missing else vb})
            if va is missing:
                out[-1]["only_in"] = "b"
            elif vb is missing:
                out[-1]["only_in"] = "a"
    return out


class _Comparer:
    def __init__(self, a: PromptBank, b: PromptBank):
        self.a, self.b = a, b
        self.bytes = self.prompts = 0
        self.by = "name" if a.task_names and b.task_names else "index"
        self._same_shared = None

    def same_shared(self) -> bool:
        if self._same_shared is None:
            pa, pb = self.a.tensors["prompt_embeddings"], self.b.tensors["prompt_embeddings"]
            self._same_shared = _same_layout(pa, pb) and self._equal(pa, pb)
        return self._same_shared

    def _equal(self, x, y) -> bool:
        self.bytes += x.nbytes + y.nbytes
        return bytes(x.read()) == bytes(y.read())

    def shared(self) -> dict:
        pa, pb = self.a.tensors["prompt_embeddings"], self.b.tensors["prompt_embeddings"]
        if self.same_shared():
            return {"status": "identical"}
        if pa.shape != pb.shape:
            return {"status": "differs", "shape": {"a": list(pa.shape), "b": list(pb.shape)}}
        import torch

        if pa.dtype != pb.dtype:  # not read yet: same_shared() compares bytes of one dtype only
            self.bytes += pa.nbytes + pb.nbytes
        x, y = pa.to_torch(dtype=torch.float64), pb.to_torch(dtype=torch.float64)
        return {"status": "differs", **prompt_errors(x, y)}

    def tasks(self) -> list[dict]:
        a, b = self.a, self.b
        if self.by == "name":
            in_b = {n: j for j, n in enumerate(b.task_names)}
            pairs = [(i, in_b.get(n)) for i, n in enumerate(a.task_names)]
            matched = {j for _, j in pairs if j is not None}
            pairs += [(None, j) for j in range(b.num_tasks) if j not in matched]
        else:
            pairs = [(k, k if k < b.num_tasks else None) for k in range(a.num_tasks)]
            pairs += [(None, j) for j in range(a.num_tasks, b.num_tasks)]
        rows = []
        for i, j in pairs:
            row = {"task": a.names()[i] if i is not None else b.names()[j], "a": i, "b": j}
            if j is None or i is None:
                row["status"] = "only in A" if j is None else "only in B"
            elif self.by == "index" and a.task_names != b.task_names:
                row["names"] = {"a": a.names()[i], "b": b.names()[j]}
            rows.append(row)
        both = [r for r in rows if "status" not in r]
        if self.same_shared() and all(_same_layout(a.tensors[k], b.tensors[k], rows=True) for k in KEYS[1:]):
            self._identical(both)
        self._prompts([r for r in both if "status" not in r])
        self._renamed(rows)
        return rows

    def _identical(self, rows: list[dict]) -> None:
        """Mark the tasks whose factors hold the same bytes (read a chunk of tasks at a time)."""
        a, b = self.a, self.b
        sizes = {k: a.tensors[k].row_nbytes for k in KEYS[1:]}
        step = max(1, CHUNK_BYTES // sum(sizes.values()))
        for lo in range(0, len(rows), step):
            chunk = rows[lo : lo + step]
            data = {}
            for k in KEYS[1:]:
                data[k] = [bank.tensors[k].rows([r[w] for r in chunk]).read() for bank, w in ((a, "a"), (b, "b"))]
                self.bytes += 2 * sizes[k] * len(chunk)
            for n, r in enumerate(chunk):
                cut = lambda buf, k: bytes(buf[n * sizes[k] : (n + 1) * sizes[k]])  # noqa: B023 (used at once)
                if all(cut(data[k][0], k) == cut(data[k][1], k) for k in KEYS[1:]):
                    r["status"] = "identical"

    def _prompts(self, rows: list[dict]) -> None:
        """Compare the full prompts of the tasks that are not identical (a chunk of tasks at a time)."""
        a, b = self.a, self.b
        if not rows:
            return
        if a.num_tokens != b.num_tokens or a.token_dim != b.token_dim:
            shape = {"a": [a.num_tokens, a.token_dim], "b": [b.num_tokens, b.token_dim]}
            for r in rows:
                r.update(status="differs", shape=shape)
            return
        import torch

        from ._numerics import task_prompts

        f64 = torch.float64
        pe = [bank.tensors["prompt_embeddings"].to_torch(dtype=f64).unsqueeze(0) for bank in (a, b)]
        step = max(1, CHUNK_BYTES // (2 * 8 * a.num_tokens * a.token_dim))
        for lo in range(0, len(rows), step):
            chunk = rows[lo : lo + step]
            x, y = (
                task_prompts(
                    pe[n],
                    bank.tensors["prefix_task_cols"].rows([r[w] for r in chunk]).to_torch(dtype=f64),
                    bank.tensors["prefix_task_rows"].rows([r[w] for r in chunk]).to_torch(dtype=f64),
                )
                for n, (bank, w) in enumerate(((a, "a"), (b, "b")))
            )
            self.prompts += 2 * len(chunk)
            self.bytes += len(chunk) * sum(bank.tensors[k].row_nbytes for bank in (a, b) for k in KEYS[1:])
            gap = y - x  # the chunk's differences, norms and largest entries at once
            norms = torch.linalg.vector_norm(x, dim=(1, 2)).tolist()
            gaps = torch.linalg.vector_norm(gap, dim=(1, 2)).tolist()
            largest = gap.abs_().amax(dim=(1, 2)).tolist()
            for n, r in enumerate(chunk):
                same = largest[n] == 0 or (largest[n] != largest[n] and torch.equal(x[n], y[n]))  # NaN: inf - inf
                rel = gaps[n] / norms[n] if norms[n] > 0 else (0.0 if gaps[n] == 0 else None)
                r.update(status="same prompt" if same else "differs", relative_error=rel, max_abs_diff=largest[n])

    def _renamed(self, rows: list[dict]) -> None:
        """Pair tasks only in A with tasks only in B that hold the same bytes."""
        if not self.same_shared():
            return
        a, b = self.a, self.b
        if any(not _same_layout(a.tensors[k], b.tensors[k], rows=True) for k in KEYS[1:]):
            return
        only_b = [r for r in rows if r["status"] == "only in B"]
        if not only_b or not any(r["status"] == "only in A" for r in rows):
            return
        digests = {}
        for r in only_b:
            digests.setdefault(self._digest(b, r["b"]), r)
        for r in rows:
            if r["status"] != "only in A":
                continue
            twin = digests.pop(self._digest(a, r["a"]), None)
            if twin is not None:
                r.update(status="renamed", b=twin["b"], renamed_to=twin["task"])
                rows.remove(twin)

    def _digest(self, bank: PromptBank, k: int) -> str:
        h = hashlib.sha256()
        for key in KEYS[1:]:
            arr = bank.tensors[key].rows([k])
            self.bytes += arr.nbytes
            h.update(bytes(arr.read()))
        return h.hexdigest()


def _same_layout(x, y, rows: bool = False) -> bool:
    return x.dtype == y.dtype and (x.shape[1:] == y.shape[1:] if rows else x.shape == y.shape)


def prompt_errors(x, y) -> dict:
    import torch

    d = (y - x).abs()
    norm = float(torch.linalg.vector_norm(x))
    gap = float(torch.linalg.vector_norm(y - x))
    rel = gap / norm if norm > 0 else (0.0 if gap == 0 else None)  # None: A is zero, B is not
    return {"relative_error": rel, "max_abs_diff": float(d.max()) if d.numel() else 0.0}
