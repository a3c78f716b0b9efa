"""Every command that computes refuses values it cannot compute with, before any work and before
anything is written: a NaN or an Inf in the shared prompt or in a task's factors, and finite factors
whose product PEFT computes as Inf (it overflows the bank's dtype). The sentence names the file, the
tensor and the task. Once ``rank`` said "internal error: _LinAlgError", and ``rank --max-error``
with one NaN in the shared prompt wrote all-NaN factors for every task with exit 0; ``merge
--refit`` wrote a provenance with NaN errors that mptkit could not read back.

Commands that average factors (``derive --mode average``, ``add --init average``) never form a
product, so a product that overflows is fine there; a NaN or an Inf is not. Checked in-process with
the CLI (exit status, stderr, nothing written) on banks written by the safetensors package."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.support.banks import random_bank, write_bank
from tests.support.commands import one_error

NAMES = ["sst2", "mnli", "rte"]


def _bank(path, defect: str, dtype=torch.float32):
    g = torch.Generator().manual_seed(7)
    pe, cols, rows = (torch.randn(*s, generator=g, dtype=torch.float64) for s in ((4, 6), (3, 4, 2), (3, 2, 6)))
    if defect == "nan-shared":
        pe[2, 3] = float("nan")
    elif defect == "inf-cols":
        cols[1, 0, 1] = float("inf")
    elif defect == "nan-rows":
        rows[2, 1, 5] = float("nan")
    elif defect == "product-overflows":  # every value finite; mnli's cols @ rows is ~1e40 in float32
        cols[1] *= 1e20
        rows[1] *= 1e20
    elif defect == "prompt-overflows":  # finite factors and product; rte's prompt is ~1e39 in float32
        cols[2] *= 1e19
        rows[2] *= 1e19
        pe *= 30
    return write_bank(path, pe.to(dtype), cols.to(dtype), rows.to(dtype), NAMES)


#: what each defect's sentence names
WORDS = {
    "nan-shared": ["tensor 'prompt_embeddings'", "1 NaN/Inf value"],
    "inf-cols": ["tensor 'prefix_task_cols' of task 1 (mnli)", "1 NaN/Inf value"],
    "nan-rows": ["tensor 'prefix_task_rows' of task 2 (rte)", "1 NaN/Inf value"],
    "product-overflows": ["task 1 (mnli): its factors' product cols @ rows reaches", "beyond float32's largest"],
    "prompt-overflows": ["task 2 (rte): its full prompt reaches", "beyond float32's largest"],
}

COMMANDS = {
    "rank": ["rank", "{src}", "--rank", "1", "-o", "{out}/r.safetensors"],
    "rank auto": ["rank", "{src}", "--rank", "auto", "--max-error", "0.01", "-o", "{out}/r.safetensors"],
    "merge --refit": ["merge", "{ok}", "{src}", "--refit", "--rename-duplicates", "-o", "{out}/m.safetensors"],
    "add --from --refit": [
        "add",
        "{ok}",
        "--name",
        "new",
        "--from",
        "{src}:rte",
        "--refit",
        "-o",
        "{out}/a.safetensors",
    ],
    "similarity": ["similarity", "{src}"],
    "export": [
        "export",
        "{src}",
        "--task",
        "{task}",
        "--task-type",
        "CAUSAL_LM",
        "--num-virtual-tokens",
        "4",
        "-o",
        "{out}/e",
    ],
    "export --all": ["export", "{src}", "--all", "-o", "{out}/t.npy"],
    "derive average": ["derive", "{src}", "--mode", "average", "-o", "{out}/d.safetensors"],
    "add --init average": ["add", "{src}", "--name", "new", "--init", "average", "-o", "{out}/a.safetensors"],
}
AVERAGES = {"derive average", "add --init average"}


@pytest.fixture(scope="module")
def ok(tmp_path_factory):
    return random_bank(tmp_path_factory.mktemp("ok") / "ok.safetensors", T=2, N=4, r=2, d=6, names=["a", "b"])


@pytest.mark.parametrize("defect", list(WORDS))
@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_command_that_computes_refuses_what_it_cannot_compute_with(cli, tmp_path, ok, command, defect):
    src = _bank(tmp_path / f"{defect}.safetensors", defect)
    out = tmp_path / "out"
    out.mkdir()
    task = {"inf-cols": "mnli", "product-overflows": "mnli", "nan-rows": "rte", "prompt-overflows": "rte"}.get(
        defect, "sst2"
    )
    argv = [a.format(src=src, ok=ok, out=out, task=task) for a in COMMANDS[command]]
    if command == "add --from --refit" and defect in ("inf-cols", "product-overflows"):
        argv[argv.index(f"{src}:rte")] = f"{src}:mnli"
    r = cli(*argv)
    if command in AVERAGES and "overflows" in defect:  # no product is formed: a finite mean
        assert r.exit_code == 0, r.stderr
        return
    line = one_error(r, *WORDS[defect], where=src)
    assert "internal error" not in line
    assert not list(out.iterdir()), list(out.iterdir())


def test_float64_banks_name_an_overflow_of_float64_itself(cli, tmp_path):
    src = _bank(tmp_path / "f64.safetensors", "ok", torch.float64)
    g = torch.Generator().manual_seed(1)
    cols = torch.randn(3, 4, 2, generator=g, dtype=torch.float64) * 1e200
    rows = torch.randn(3, 2, 6, generator=g, dtype=torch.float64) * 1e200
    write_bank(src, torch.ones(4, 6, dtype=torch.float64), cols, rows, NAMES)
    r = cli("rank", src, "--rank", "1", "-o", tmp_path / "r.safetensors")
    one_error(r, "task 0 (sst2): its factors' product cols @ rows overflows even float64", where=src)
    assert not (tmp_path / "r.safetensors").exists()


def test_a_fit_whose_arithmetic_overflows_is_one_sentence(cli, tmp_path):
    """Prompts of 1e160 are finite in float64, but the fit squares them: refused, not a LinAlgError."""
    g = torch.Generator().manual_seed(2)
    f = torch.float64
    pe = torch.randn(4, 6, generator=g, dtype=f) * 1e80
    cols, rows = torch.randn(3, 4, 2, generator=g, dtype=f) * 1e40, torch.randn(3, 2, 6, generator=g, dtype=f) * 1e40
    src = write_bank(tmp_path / "huge.safetensors", pe, cols, rows, NAMES)
    r = cli("rank", src, "--rank", "1", "-o", tmp_path / "r.safetensors")
    one_error(r, "the rank failed", "overflowed float64")
    assert not (tmp_path / "r.safetensors").exists()


def test_decompose_refuses_a_prompt_holding_nan(cli, tmp_path):
    table = np.random.default_rng(0).standard_normal((3, 4, 6)).astype(np.float32)
    table[1, 2, 2] = np.nan
    np.save(tmp_path / "t.npy", table)
    r = cli("decompose", tmp_path / "t.npy", "--rank", "1", "-o", tmp_path / "d.safetensors")
    one_error(r, "prompt 'task1' holds 1 NaN/Inf value", "decompose computes with it", where=tmp_path / "t.npy")
    assert not (tmp_path / "d.safetensors").exists()


def test_similarity_of_finite_prompts_whose_products_overflow_float32_is_right(tmp_path):
    """Prompts of 1e20 are finite in float32, their squares are not: the cosines come out as for
    the same bank scaled down (a cosine does not change with scale), not NaN."""
    import json

    from tests.support.commands import run_mptkit

    g = torch.Generator().manual_seed(3)
    pe, cols, rows = (
        torch.randn(4, 6, generator=g),
        torch.randn(3, 4, 2, generator=g),
        torch.randn(3, 2, 6, generator=g),
    )
    small = write_bank(tmp_path / "small.safetensors", pe, cols, rows, NAMES)
    big = write_bank(tmp_path / "big.safetensors", pe, cols * 1e20, rows, NAMES)
    a = json.loads(run_mptkit("similarity", small, "--json").stdout)["matrix"]
    b = json.loads(run_mptkit("similarity", big, "--json").stdout)["matrix"]
    torch.testing.assert_close(
        torch.tensor(b, dtype=torch.float64), torch.tensor(a, dtype=torch.float64), rtol=0, atol=1e-6
    )
