"""``mptkit report``: the output checks every output gets (suffix, --force, inputs never
overwritten, nothing written on a refusal), the page's data (safe JSON, no network reference, the
numbers the other commands compute) and the stated size bound. The browser's view of the page is
tests/report/test_report_in_a_browser.py."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest

import mptkit
from mptkit._schema import check
from tests.support.banks import random_bank
from tests.support.commands import one_error, run_mptkit

DATA = re.compile(r'<script type="application/json" id="mptkit-data">(.*?)</script>', re.S)


def _data(html: str) -> dict:
    return json.loads(DATA.search(html).group(1))


def test_report_writes_one_page_and_says_where(cli, example_bank, tmp_path):
    out = tmp_path / "report.html"
    r = cli("report", example_bank, "-o", out)
    assert r.exit_code == 0, r.stderr
    assert r.stdout.startswith(f"wrote {out}: a report of 4 task(s), ")
    html = out.read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>") and "Content-Security-Policy" in html
    r = cli("report", example_bank, "-o", tmp_path / "again.html", "--json")
    info = json.loads(r.stdout)
    size = (tmp_path / "again.html").stat().st_size
    assert info == {
        "output": str(tmp_path / "again.html"),
        "bytes": size,
        "num_tasks": 4,
        "heatmap_cells": 4,
        "block": 1,
    }
    assert check("output", info, pointer="/$defs/report") == []


def test_the_page_fetches_nothing_and_inlines_everything(cli, example_bank, tmp_path):
    out = tmp_path / "report.html"
    assert cli("report", example_bank, "-o", out).exit_code == 0
    html = out.read_text(encoding="utf-8")
    assert not re.search(r"https?:", html)
    assert not re.search(r"\b(src|href)\s*=", html)  # no <script src>, <link href>, <img src>
    assert "@import" not in html and "url(" not in html
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', html).group(1)
    assert csp.startswith("default-src 'none'; script-src 'sha256-")


def test_existing_outputs_inputs_and_other_suffixes_are_refused_before_any_work(cli, example_bank, tmp_path):
    out = tmp_path / "report.html"
    out.write_text("mine")
    r = cli("report", example_bank, "-o", out)
    assert r.exit_code == 2 and "already exists; replacing it needs --force" in r.stderr
    assert out.read_text() == "mine"
    assert cli("report", example_bank, "-o", out, "--force").exit_code == 0
    assert out.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    for bad, words in (
        (tmp_path / "report.png", "does not write .png files"),
        (tmp_path / "report", "does not write"),
        (example_bank / "report.html", "inside the input"),
    ):
        r = run_mptkit("report", str(example_bank), "-o", str(bad))
        assert words in one_error(r) and not bad.exists(), (bad, r.stderr)


def test_a_bank_that_cannot_be_read_writes_nothing(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    r = run_mptkit("report", str(bad), "-o", str(tmp_path / "r.html"))
    assert r.returncode == 2 and "tensor 'prompt_embeddings' is missing" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "r.html").exists()


def _write_report(path, out) -> dict:
    """The report of ``path`` written to ``out`` (mptkit.report, then mptkit.save): its info."""
    report = mptkit.report(path)
    mptkit.save(report, out)
    return report.info


def test_the_data_holds_what_the_other_commands_compute(tmp_path):
    path = random_bank(tmp_path / "b.safetensors", T=7, N=5, r=3, d=6, names=[f"task{i}" for i in range(7)])
    out = tmp_path / "r.html"
    _write_report(path, out)
    data = _data(out.read_text(encoding="utf-8"))
    bank = mptkit.load(path)
    stats = mptkit.value_stats(bank)["tasks"]
    sim = mptkit.similarity(bank, top=5, matrix=True)
    for k, t in enumerate(data["tasks"]):
        assert t["name"] == f"task{k}" and t["index"] == k
        assert math.isclose(t["prompt_norm"], stats[k]["prompt_norm"], rel_tol=1e-5)
        assert [data["tasks"][j]["name"] for j, _ in t["nearest"]] == [x["task"] for x in sim["top"][k]]
        # the singular values of cols[k] @ rows[k], computed here the slow way
        prod = np.asarray(
            bank.tensors["prefix_task_cols"].to_torch()[k] @ bank.tensors["prefix_task_rows"].to_torch()[k]
        )
        want = np.linalg.svd(prod.astype(np.float64), compute_uv=False)[:3]
        assert np.allclose(t["sv"], want, rtol=1e-5) and t["rank_used"] == 3
    assert sorted(data["order"]) == list(range(7)) and data["heatmap"]["size"] == 1
    cells = np.frombuffer(__import__("base64").b64decode(data["heatmap"]["mean"]), "<i2").reshape(7, 7)
    o = data["order"]
    assert np.allclose(cells / 10000, np.asarray(sim["matrix"])[np.ix_(o, o)], atol=1e-4)


def test_text_from_the_bank_cannot_close_the_data_element():
    from mptkit._report_html import data_json

    hostile = {"n": "</script><script>alert(1)</script> <!-- & https://x \u2028 \u202e"}
    text = data_json(hostile)
    assert not set("<>&") & set(text) and "//" not in text and "\u2028" not in text and text.isascii()
    assert json.loads(text) == hostile


def test_many_tasks_stay_within_the_stated_size(tmp_path):
    """The page is at most 1 MB + 1 kB a task (heatmap blocks, 5 neighbours, names of at most 200
    characters, as banks hold them)."""
    T = 2000
    names = [f"t{i:04d}-" + "y" * 194 for i in range(T)]
    path = random_bank(tmp_path / "big.safetensors", T=T, N=4, r=2, d=8, names=names)
    out = tmp_path / "big.html"
    info = _write_report(path, out)
    assert info["bytes"] == out.stat().st_size <= 1_000_000 + 1_000 * T
    data = _data(out.read_text(encoding="utf-8"))
    assert info["heatmap_cells"] == data["heatmap"]["cells"] <= 300 and info["block"] == math.ceil(T / 300)
    assert [t["name"] for t in data["tasks"]] == names
    assert all(len(t["nearest"]) == 5 for t in data["tasks"])


def test_a_shared_only_bank_and_non_finite_values(tmp_path):
    import torch

    from tests.support.banks import write_bank

    g = torch.Generator().manual_seed(0)
    pe, cols, rows = (
        torch.randn(3, 4, generator=g),
        torch.randn(3, 3, 2, generator=g),
        torch.randn(3, 2, 4, generator=g),
    )
    cols[0, 1, 1] = float("nan")
    path = write_bank(tmp_path / "nan.safetensors", pe, cols, rows)
    data = _data(_write_report(path, tmp_path / "nan.html") and (tmp_path / "nan.html").read_text(encoding="utf-8"))
    t0 = data["tasks"][0]
    assert t0["nonfinite_cols"] == 1 and t0["nonfinite_prompt"] > 0 and t0["sv"] is None and t0["rank_used"] is None
    assert t0["nearest"] == [] and all(j != 0 for t in data["tasks"][1:] for j, _ in t["nearest"])
    shared = tmp_path / "shared.safetensors"
    assert run_mptkit("derive", str(path), "--mode", "shared", "-o", str(shared)).returncode == 0
    r = run_mptkit("report", str(shared), "-o", str(tmp_path / "shared.html"))
    assert r.returncode == 0, r.stderr
    assert _data((tmp_path / "shared.html").read_text(encoding="utf-8"))["tasks"] == []


@pytest.mark.parametrize("T", [1, 2, 3])
def test_few_tasks(tmp_path, T):
    path = random_bank(tmp_path / "b.safetensors", T=T, N=4, r=2, d=5)
    data = _data((_write_report(path, tmp_path / "r.html") and tmp_path / "r.html").read_text(encoding="utf-8"))
    assert [t["name"] for t in data["tasks"]] == [str(k) for k in range(T)] and sorted(data["order"]) == list(range(T))


def test_a_bank_of_more_tasks_than_a_report_holds_is_refused_with_its_size(cli, tmp_path):
    """The page holds 1 MB + 1 kB a task: above its stated limit the report is refused before any
    work, naming the page's size and what to ask instead; nothing is written."""
    from mptkit._report import MAX_TASKS

    T = MAX_TASKS + 1
    path = random_bank(tmp_path / "many.safetensors", T=T, N=1, r=1, d=2)
    out = tmp_path / "r.html"
    r = cli("report", path, "-o", out)
    assert r.exit_code == 2
    line = one_error(r, f"{T:,} tasks", f"at most {MAX_TASKS:,}", "similarity BANK --top K")
    assert str(path) in line and "a page of about 21 MB (1 MB + 1 kB a task)" in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["many.safetensors"]
    with pytest.raises(mptkit.UsageError, match="at most"):
        mptkit.report(path)


def _clustered(path, T: int, N: int = 3, r: int = 2, d: int = 8):
    """Three clusters of tasks (task k in cluster k % 3); task 7's prompt is NaN (no cosine)."""
    import torch

    g = torch.Generator().manual_seed(0)
    centres = torch.randn(3, r, d, generator=g)
    rows = torch.stack([centres[k % 3] + 0.05 * torch.randn(r, d, generator=g) for k in range(T)])
    cols = torch.ones(T, N, r) + 0.01 * torch.randn(T, N, r, generator=g)
    cols[7] = float("nan")
    from tests.support.banks import write_bank

    return write_bank(path, torch.randn(N, d, generator=g), cols, rows, [f"t{k}" for k in range(T)])


def test_many_tasks_give_the_matrix_s_neighbours_and_blocks_in_two_passes(tmp_path, monkeypatch):
    """Above DENSE_TASKS the figures come from each task's nearest, in two blocked passes: the
    neighbours are the cosine matrix's, the heatmap's blocks are the matrix's blocks in the order
    the passes chose (to the page's 1e-4), that order keeps each cluster together, and the map puts
    each cluster in its own place."""
    import base64

    import mptkit._report as rep

    bank = mptkit.load(_clustered(tmp_path / "c.safetensors", T=120))
    monkeypatch.setattr(rep, "HEATMAP_CELLS", 16)  # blocks of 8 tasks
    dense = rep.report_data(bank)
    monkeypatch.setattr(rep, "DENSE_TASKS", 50)
    large = rep.report_data(bank)
    assert [t["nearest"] for t in large["tasks"]] == [t["nearest"] for t in dense["tasks"]]
    ref = rep.heatmap(rep.cosines(bank), large["order"])
    assert large["heatmap"]["size"] == 8
    for key in ("mean", "min", "max"):
        a, b = (np.frombuffer(base64.b64decode(h[key]), "<i2").astype(int) for h in (ref, large["heatmap"]))
        assert np.abs(a - b).max() <= 1, key
    clusters = [k % 3 for k in large["order"] if k != 7]
    assert sum(a != b for a, b in zip(clusters, clusters[1:])) == 2  # three runs, one a cluster
    xy = np.array([t["xy"] for t in large["tasks"]])
    centre = {c: xy[[k for k in range(120) if k % 3 == c and k != 7]].mean(0) for c in range(3)}
    spread = max(np.linalg.norm(xy[k] - centre[k % 3]) for k in range(120) if k != 7)
    apart = min(np.linalg.norm(centre[a] - centre[b]) for a in range(3) for b in range(a + 1, 3))
    assert spread < apart / 4, (spread, apart)


def test_many_tasks_cost_memory_a_task_not_a_matrix(tmp_path):
    """20,000 tiny tasks once reached 6.4 GB (the T x T matrices) and then ran out of memory: their
    report now grows with tasks x K. Measured as the growth of the child's peak RSS between 5,000 and
    20,000 tasks (the interpreter and torch cancel out): a dense 20,000 x 20,000 float64 matrix
    alone would be 3.2 GB."""
    from tests.support.measured import killed_for_cpu, run_measured

    peaks = {}
    for T in (5_000, 20_000):
        path = random_bank(tmp_path / f"t{T}.safetensors", T=T, N=1, r=1, d=2)
        m = run_measured("report", path, "-o", tmp_path / f"r{T}.html", cpu_limit_s=240)
        assert not killed_for_cpu(m) and m.returncode == 0, (m.returncode, m.stderr[-800:])
        peaks[T] = m.peak_rss_mb
    assert peaks[20_000] - peaks[5_000] < 200, peaks  # tasks x K and the page: tens of MB
