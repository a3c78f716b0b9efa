"""The pictures a pushed bank's model card shows: the similarity heatmap (tasks in clustered order)
and the rank-use chart, as PNG files. Drawn with Pillow (a small, well-kept library with no
dependencies of its own, whose bundled font needs nothing from the system); the numbers are the
report's (:mod:`mptkit._report`), so the card and ``mptkit report`` agree.

The bytes depend on the bank only (no time stamps), so pushing the same bank twice changes nothing.
"""

from __future__ import annotations

import io
import math

from ._bank import PromptBank

#: file names in the repo, beside README.md
SIMILARITY_PNG = "images/similarity.png"
RANK_USE_PNG = "images/rank-use.png"
#: heatmap cells a side at most in the image (blocks of tasks beyond)
IMAGE_CELLS = 200
#: names written beside the heatmap only up to this many tasks
LABELLED = 40

_STOPS = [(5, 48, 97), (67, 147, 195), (247, 247, 247), (214, 96, 77), (103, 0, 31)]
_INK, _MUTED, _GREY = (29, 36, 48), (91, 100, 116), (160, 160, 160)


def colour(c: float) -> tuple[int, int, int]:
    """The report's diverging scale: -1 blue, 0 light, +1 red; grey for no cosine."""
    if c is None or not math.isfinite(c):
        return _GREY
    t = (max(-1.0, min(1.0, c)) + 1.0) * 2.0
    i = min(3, int(t))
    f, a, b = t - i, _STOPS[i], _STOPS[i + 1]
    return tuple(round(a[k] + f * (b[k] - a[k])) for k in range(3))


def _font(size: int):
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def _png(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _label(name: str, n: int = 22) -> str:
    # control and bidirectional-override characters would reorder or hide the label
    text = "".join(
        ch if ch.isprintable() and ch not in "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069" else "?"
        for ch in name
    )
    return text if len(text) <= n else text[: n - 1] + "\u2026"


def similarity_png(cos, order: list[int], names: list[str]) -> bytes:
    """The cosine matrix in ``order`` as a heatmap with a colour bar (names beside it for at most
    :data:`LABELLED` tasks; blocks of tasks, their mean cosine, beyond :data:`IMAGE_CELLS`)."""
    import numpy as np
    from PIL import Image, ImageDraw

    T = len(order)
    size = max(1, math.ceil(T / IMAGE_CELLS))
    n = math.ceil(T / size)
    m = np.full((n * size, n * size), np.nan)
    m[:T, :T] = cos[np.ix_(order, order)]
    blocks = m.reshape(n, size, n, size)
    ok = np.isfinite(blocks)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(ok, blocks, 0.0).sum(axis=(1, 3)) / ok.sum(axis=(1, 3))
    cell = max(2, 600 // n)
    side = cell * n
    label = 150 if T <= LABELLED else 10
    font, small = _font(12), _font(11)
    img = Image.new("RGB", (label + side + 90, label + side + 40), "white")
    rgb = np.array([[colour(float(v)) for v in row] for row in mean], dtype=np.uint8)
    img.paste(Image.fromarray(rgb, "RGB").resize((side, side), Image.NEAREST), (label, label))
    draw = ImageDraw.Draw(img)
    draw.text(
        (label, 8 if T > LABELLED else 8),
        "task similarity (cosine of full prompts), clustered order",
        font=font,
        fill=_INK,
    )
    if T <= LABELLED:
        for i, k in enumerate(order):
            y = label + i * cell + cell // 2
            draw.text((label - 6, y), _label(names[k]), font=small, fill=_INK, anchor="rm")
        top = Image.new("RGB", (label - 30, side), "white")
        td = ImageDraw.Draw(top)
        for i, k in enumerate(order):
            td.text((4, i * cell + cell // 2), _label(names[k]), font=small, fill=_INK, anchor="lm")
        img.paste(top.rotate(90, expand=True), (label, 24))
    else:
        draw.text(
            (label, label + side + 8),
            f"{T} tasks in blocks of {size}" if size > 1 else f"{T} tasks",
            font=small,
            fill=_MUTED,
        )
    x0 = label + side + 20
    for y in range(side):
        draw.line([(x0, label + y), (x0 + 16, label + y)], fill=colour(1 - 2 * y / max(1, side - 1)))
    for text, y in (("+1", label), ("0", label + side // 2), ("-1", label + side - 1)):
        draw.text((x0 + 22, y), text, font=small, fill=_INK, anchor="lm")
    return _png(img)


def rank_use_png(svs: list, r: int) -> bytes:
    """Each task's effective rank of ``cols[k] @ rows[k]`` (of r) as a bar, in task order; a task
    whose factors are not finite gets a grey stub."""
    from PIL import Image, ImageDraw

    from ._report import rank_figures

    T = len(svs)
    eff = [rank_figures(s, (1, 1))["effective_rank"] if s is not None else None for s in svs]
    size = max(1, math.ceil(T / 600))
    groups = [eff[i : i + size] for i in range(0, T, size)]
    bar = max(1, min(24, 600 // max(1, len(groups))))
    plot_h, left, top = 240, 50, 34
    width = left + bar * len(groups) + 30
    img = Image.new("RGB", (max(width, 420), top + plot_h + 44), "white")
    draw = ImageDraw.Draw(img)
    font, small = _font(12), _font(11)
    draw.text((left, 8), f"rank use: effective rank of cols[k] @ rows[k] (r = {r})", font=font, fill=_INK)
    base = top + plot_h
    draw.line([(left, top), (left, base), (left + bar * len(groups), base)], fill=_MUTED)
    scale = plot_h / max(1, r)
    for y_val in range(0, r + 1, max(1, r // 4)):
        y = base - y_val * scale
        draw.text((left - 6, y), str(y_val), font=small, fill=_INK, anchor="rm")
    for i, g in enumerate(groups):
        vals = [v for v in g if isinstance(v, (int, float))]
        x = left + i * bar
        if not vals:
            draw.rectangle([x, base - 4, x + max(0, bar - 2), base], fill=_GREY)
            continue
        h = sum(vals) / len(vals) * scale
        draw.rectangle([x, base - h, x + max(0, bar - 2), base], fill=(44, 95, 168))
    what = (
        f"{T} tasks"
        + (f", bars are means of {size}" if size > 1 else "")
        + "; r = all singular values equal, 1 = one dominates"
    )
    draw.text((left, base + 8), what, font=small, fill=_MUTED)
    return _png(img)


def card_images(bank: PromptBank) -> dict[str, bytes]:
    """``{path in the repo: PNG bytes}`` for a bank's card: :data:`SIMILARITY_PNG` and :data:`RANK_USE_PNG`."""
    from ._report import cluster_order, cosines, rank_use

    if bank.shared_only or bank.num_tasks == 0:
        return {}
    cos = cosines(bank)
    order = cluster_order(cos)
    return {
        SIMILARITY_PNG: similarity_png(cos, order, bank.names()),
        RANK_USE_PNG: rank_use_png(rank_use(bank), bank.rank),
    }
