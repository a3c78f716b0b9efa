"""What a learned prompt means: for each virtual token of a task's full prompt (or of the shared
prompt), the vocabulary tokens whose input embeddings are nearest by cosine similarity, decoded with
the base model's ``tokenizer.json`` (the ``tokenizers`` library). Prompt-tuning papers read learned
prompts this way.

Only the base model's input-embedding tensor and its ``tokenizer.json`` are read
(:mod:`mptkit.formats._embeddings`; from the Hub by range requests). The vocabulary is scanned a
block of rows at a time (:data:`BLOCK_BYTES` of float32), each block read once, normalised and
multiplied with the normalised prompt, and the running top-k kept: memory is bounded by one block
whatever the vocabulary, and the cost is one pass over the matrix plus one (blocked) matmul.
"""

from __future__ import annotations

import os

from . import _progress as progress
from ._bank import PromptBank, select_tasks
from .errors import InvalidModel, UsageError
from .formats._embeddings import MAX_TOKENIZER_BYTES

#: bytes of float32 vocabulary rows scored at a time
BLOCK_BYTES = 32 << 20
MAX_TOP = 1000


def nearest(prompt, embeddings, top: int):
    """``(ids, cosines)``, each (N, top): for each row of ``prompt`` (N, d), the ``top`` rows of the
    embedding matrix with the highest cosine similarity, best first."""
    import torch

    pn = prompt.float()
    pn = pn / _row_norms(pn).unsqueeze(1)
    V, d = embeddings.vocab_size, embeddings.hidden_size
    step = max(top, BLOCK_BYTES // (4 * d))
    best_c = torch.empty(pn.shape[0], 0)
    best_i = torch.empty(pn.shape[0], 0, dtype=torch.long)
    with progress.bar(V, "explain") as bar:
        for lo in range(0, V, step):
            hi = min(V, lo + step)
            e = embeddings.block(lo, hi).float()
            scores = pn @ e.T
            scores /= _row_norms(e)
            c, i = scores.topk(min(top, hi - lo), dim=1)
            best_c, order = torch.cat((best_c, c), dim=1).topk(min(top, best_c.shape[1] + c.shape[1]), dim=1)
            best_i = torch.cat((best_i, i + lo), dim=1).gather(1, order)
            bar.update(hi - lo)
    return best_i, best_c


def _row_norms(x):
    """The Euclidean norm of each row of ``x`` (float32), also where the squares of finite values
    overflow float32 (rows of 1e19 and more: their cosines were all 0): such rows are scaled by their
    largest value first. Never below float32's smallest normal (a zero row then has cosine 0)."""
    import torch

    tiny = torch.finfo(torch.float32).tiny
    n = x.norm(dim=1)
    if not bool(torch.isfinite(n).all()):  # rare: only then the extra passes
        scale = x.abs().amax(dim=1).clamp_min(tiny)
        n = torch.where(torch.isfinite(n), n, (x / scale.unsqueeze(1)).norm(dim=1) * scale)
    return n.clamp_min(tiny)


def load_tokenizer(path: str | None, where: str):
    """The ``tokenizers.Tokenizer`` in ``path`` (a model's ``tokenizer.json``)."""
    if path is None:
        raise InvalidModel(
            f"{where}: no tokenizer.json beside the model; explain decodes token ids with it (save it with "
            "tokenizer.save_pretrained(folder), or build one with the tokenizers library)"
        )
    try:
        size = os.stat(path).st_size
    except OSError as e:
        raise InvalidModel(f"{path}: cannot read the tokenizer ({e.strerror or e})") from None
    if size > MAX_TOKENIZER_BYTES:
        raise InvalidModel(f"{path}: {size:,} bytes, more than the {MAX_TOKENIZER_BYTES:,} a tokenizer.json has")
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_file(path)
    except Exception as e:  # the library's own error for a file it cannot parse
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise InvalidModel(f"{path}: not a tokenizer.json the tokenizers library reads ({first})") from None


def explain(bank: PromptBank, embeddings, *, task=None, shared: bool = False, top: int = 5) -> dict:
    """The nearest vocabulary tokens of task ``task``'s full prompt (computed as PEFT computes it,
    float32) and, with ``shared``, of the shared prompt; ``embeddings`` from
    :func:`mptkit._io.load_embeddings`."""
    import torch

    from ._export import task_prompt

    if task is None and not shared:
        raise UsageError("explain: give --task K (a task's full prompt), --shared (the shared prompt), or both")
    if not 1 <= top <= MAX_TOP:
        raise UsageError(f"--top must be between 1 and {MAX_TOP}, found {top}")
    if bank.token_dim != embeddings.hidden_size:
        raise InvalidModel(
            f"{bank.where} has d={bank.token_dim} but {embeddings.where}'s input embedding ({embeddings.key}) is "
            f"{embeddings.hidden_size} wide: the bank was not trained on this model"
        )
    tok = load_tokenizer(embeddings.tokenizer(), embeddings.where)
    out = {
        "bank": bank.where,
        "base_model": embeddings.where,
        "embedding": {
            "key": embeddings.key,
            "shape": [embeddings.vocab_size, embeddings.hidden_size],
            "dtype": embeddings.dtype,
            "file": embeddings.file,
            "chosen": embeddings.why,
        },
        "top": top,
    }
    wanted = []
    if task is not None:
        k = select_tasks(bank, [task], allow_ranges=False)[0]
        out["task"], out["name"] = k, bank.names()[k]
        wanted.append(("positions", task_prompt(bank, k, dtype=torch.float32), f"task {k}"))
    if shared:
        wanted.append(("shared", bank.tensors["prompt_embeddings"].to_torch(dtype=torch.float32), "the shared prompt"))
    for _, prompt, what in wanted:
        bad = int((~torch.isfinite(prompt)).sum())
        if bad:
            raise UsageError(f"{bank.where}: {what} has {bad} non-finite values; there is nothing to compare")
    # one pass over the vocabulary for both prompts
    stacked = torch.cat([p for _, p, _ in wanted])
    ids, cos = nearest(stacked, embeddings, min(top, embeddings.vocab_size))
    pos = 0
    for field, prompt, _ in wanted:
        n = prompt.shape[0]
        rows = _positions(bank, ids[pos : pos + n], cos[pos : pos + n], tok)
        out[field] = rows if field == "positions" else {"positions": rows}
        pos += n
    return out


def _positions(bank: PromptBank, ids, cos, tok) -> list[dict]:
    v, s = bank.num_virtual_tokens, bank.num_submodules
    rows = []
    for i in range(ids.shape[0]):
        entry = {"position": i}
        if s == 2 and v:
            entry["half"] = "encoder" if i < v else "decoder"
        entry["nearest"] = [
            {
                "id": t,
                "token": tok.id_to_token(t),
                "text": tok.decode([t], skip_special_tokens=False),
                "cosine": round(float(c), 6),
            }
            for t, c in zip(ids[i].tolist(), cos[i].tolist())
        ]
        rows.append(entry)
    return rows
