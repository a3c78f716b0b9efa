"""A folder of sources for recipes: a bank of eight tasks on the loopback Hub (``hf://owner/glue@v1``,
2.4 MB, so it is read by range requests), a local bank (``qa/``, three tasks, rank 2) with the same
shared prompt, two PEFT PROMPT_TUNING adapters (``single/boolq``, ``single/copa``) exported from a
third bank with that shared prompt, and a bank whose shared prompt differs (``diffpe/``)."""

from __future__ import annotations

import pytest
import torch

from tests.recipes.recipeutil import GLUE, D, N, R, make_bank


@pytest.fixture
def world(tmp_path, monkeypatch, cli):
    """The sources (see the module doc), the current folder set to theirs."""
    import mptkit

    tmp_path = tmp_path / "world"  # beside the HF cache of the hub fixture (tmp_path / "hf-home"), not around it
    tmp_path.mkdir()
    monkeypatch.chdir(tmp_path)
    pe = torch.randn(N, D, generator=torch.Generator().manual_seed(0))
    mptkit.save(make_bank(pe, 8, R, GLUE, 1), tmp_path / "glue")
    mptkit.save(make_bank(pe, 3, 2, ["squad", "boolq2", "nq"], 2), tmp_path / "qa")
    mptkit.save(make_bank(pe, 2, 2, ["boolq", "copa"], 3), tmp_path / "other.safetensors")
    for k, name in enumerate(["boolq", "copa"]):
        assert cli("export", "other.safetensors", "--task", k, "-o", f"single/{name}").exit_code == 0
    pe2 = torch.randn(N, D, generator=torch.Generator().manual_seed(9))
    mptkit.save(make_bank(pe2, 2, R, ["x1", "x2"], 5), tmp_path / "diffpe")
    return tmp_path


@pytest.fixture
def glue_on_hub(hub, world):
    """``owner/glue`` on the loopback Hub, branch v1; returns the weights' size in bytes."""
    files = {p.name: p.read_bytes() for p in (world / "glue").iterdir()}
    hub.commit("owner/glue", files, "the glue bank", branch="v1")
    hub.clear()
    return len(files["adapter_model.safetensors"])
