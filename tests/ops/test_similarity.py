"""The similarity API (mptkit._similarity): cosines of full prompts, in blocks, and the heatmap."""

import json
import sys

import pytest
import torch

import mptkit
from mptkit import heatmap, similarity
from mptkit.errors import UsageError
from tests.support.banks import full_prompts, memory_bank


# -- similarity ----------------------------------------------------------------------------------
def test_similarity_is_the_cosine_of_full_prompts():
    bank = memory_bank(T=4, seed=4)
    cols = bank.tensors["prefix_task_cols"].to_torch().clone()
    rows = bank.tensors["prefix_task_rows"].to_torch().clone()
    cols[3], rows[3] = cols[0] * -2.5, rows[0]  # task 3 = task 0 scaled by a negative number
    from mptkit._tensor import Array

    bank.tensors["prefix_task_cols"] = Array.from_torch(cols)
    bank.tensors["prefix_task_rows"] = Array.from_torch(rows)
    res = similarity(bank)
    full = full_prompts(bank).reshape(4, -1)
    expect = torch.nn.functional.cosine_similarity(full[:, None], full[None, :], dim=-1)
    torch.testing.assert_close(torch.tensor(res["matrix"], dtype=torch.float64), expect)
    assert res["matrix"][0][3] == pytest.approx(-1.0) and res["task_names"] == ["0", "1", "2", "3"]
    sub = similarity(bank, "3,1")
    assert sub["indices"] == [3, 1] and sub["matrix"][0][1] == pytest.approx(res["matrix"][3][1])
    json.dumps(res, allow_nan=False)


def test_similarity_of_a_zero_prompt_is_none():
    bank = memory_bank(T=3, seed=4)
    cols = bank.tensors["prefix_task_cols"].to_torch().clone()
    cols[1] = 0
    from mptkit._tensor import Array

    bank.tensors["prefix_task_cols"] = Array.from_torch(cols)
    res = similarity(bank)
    assert res["matrix"][1] == [None, None, None] and res["nearest"][1] is None
    assert res["nearest"][0]["task"] == "2"


def test_similarity_in_blocks_matches(monkeypatch):
    import mptkit._similarity as sim

    bank = memory_bank(T=7, seed=6)
    whole = similarity(bank)["matrix"]
    per = 4 * bank.num_tokens * bank.token_dim
    for rows, cols, inner in ((1, 1, 5), (3 * per, 2 * per, 7), (2 * per, 1, 1 << 16)):
        monkeypatch.setattr(sim, "ROW_BLOCK_BYTES", rows)
        monkeypatch.setattr(sim, "COL_BLOCK_BYTES", cols)
        monkeypatch.setattr(sim, "INNER", inner)
        torch.testing.assert_close(torch.tensor(similarity(bank)["matrix"]), torch.tensor(whole), rtol=1e-6, atol=1e-7)


def test_plot_heatmap(tmp_path):
    pytest.importorskip("matplotlib")
    res = similarity(mptkit.set_names(memory_bank(T=3), "a,b,c"))
    out = tmp_path / "h.png"
    mptkit.save(heatmap(res), out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(Exception, match="already exists"):
        mptkit.save(heatmap(res), out)


def test_plot_without_matplotlib_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(UsageError, match=r"needs matplotlib.*mptkit\[plot\]"):
        mptkit.save(heatmap(similarity(memory_bank())), tmp_path / "h.png")
    assert not (tmp_path / "h.png").exists()
