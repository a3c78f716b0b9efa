"""Cards with pictures: ``push`` uploads the similarity heatmap and the rank-use chart as PNG files
in the same commit as the card, and the card (README.md) shows them by relative links; with
``--no-images`` neither the files nor the links are there. Against the loopback Hub (tests/fakehub)."""

from __future__ import annotations

import io
import json
import re

import mptkit
from tests.support.banks import random_bank

LINK = re.compile(r"!\[[^\]]*\]\(([^)]+)\)")


def _commit(hub, repo: str, sha: str):
    r = hub.repos[repo]
    commit = r.commits[sha]
    return hub.files(repo, sha), hub.files(repo, commit.parent)


def test_the_card_shows_pictures_uploaded_in_the_same_commit(hub, cli, tmp_path):
    from PIL import Image

    from mptkit._pictures import colour

    bank = random_bank(tmp_path / "bank.safetensors", T=3, N=4, r=2, d=6, names=["sst2", "mnli", "rte"])
    r = cli("push", bank, "owner/bank", "--task-type", "SEQ_2_SEQ_LM", "--num-virtual-tokens", "2", "--json")
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    files, before = _commit(hub, "owner/bank", out["commit"])
    links = LINK.findall(files["README.md"].decode("utf-8"))
    assert links == ["images/similarity.png", "images/rank-use.png"]
    for link in links:
        assert link in files and link not in before and link in out["files"]  # uploaded by this very commit
        assert files[link].startswith(b"\x89PNG\r\n\x1a\n")
    # the heatmap is this bank's: the first diagonal cell is +1's colour, the first off-diagonal
    # cell the colour of the cosine of the two tasks that the clustered order puts first
    img = Image.open(io.BytesIO(files["images/similarity.png"])).convert("RGB")
    loaded = mptkit.load(bank)
    sim = mptkit.similarity(loaded)["matrix"]
    from mptkit._report import cluster_order, cosines

    order = cluster_order(cosines(loaded))
    cell, label = 600 // 3, 150
    centre = lambda i, j: (label + j * cell + cell // 2, label + i * cell + cell // 2)
    assert img.getpixel(centre(0, 0)) == colour(1.0)
    assert img.getpixel(centre(0, 1)) == colour(sim[order[0]][order[1]])
    assert img.getpixel(centre(2, 1)) == colour(sim[order[2]][order[1]])


def test_no_images_leaves_the_pictures_out(hub, cli, peft_banks):
    r = cli("push", peft_banks("seq2seq"), "owner/plain", "--no-images", "--json")
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    files, _ = _commit(hub, "owner/plain", out["commit"])
    assert not [f for f in files if f.startswith("images/")]
    card = files["README.md"].decode("utf-8")
    assert LINK.findall(card) == [] and "## Pictures" not in card
    assert out["files"] == ["adapter_config.json", "adapter_model.safetensors", "README.md"]


def test_push_refuses_images_that_are_not_pngs_under_images(hub, tmp_path):
    import pytest

    bank = mptkit.load(random_bank(tmp_path / "b.safetensors", T=2, N=4, r=1, d=4))
    bank = bank.with_config({"task_type": "CAUSAL_LM", "num_virtual_tokens": 4})
    for images, words in (
        ({"../README.md": b"\x89PNG\r\n\x1a\n"}, "images/NAME.png"),
        ({"images/x.png": b"<svg/>"}, "bytes of a PNG"),
    ):
        with pytest.raises(mptkit.UsageError, match=re.escape(words)):
            mptkit.hub.push(bank, "owner/x", images=images)
    assert "owner/x" not in hub.repos
