"""The report as one self-contained HTML page: its data as JSON in a ``<script type="application/json">``
element, drawn by a small script of our own (``_assets/report.js``) on canvases, an SVG and a table.

Why our own script and no plotting library (measured 2026-12 with Debian's Chromium 150, headless; the
same heatmap with hover and 2-D map; file size / time from navigation to the second frame painted):

    tasks  plotly 7.1 (bundled JS)  bokeh 3.9 (INLINE)  vega-lite (vl-convert 1.9)  canvas (ours)
    100    4.96 MB / 2312 ms        1.53 MB / 622 ms    1.32 MB / 485 ms            0.02 MB / 120 ms
    300    6.06 MB / 1916 ms        3.59 MB / 937 ms    4.76 MB / 2405 ms           0.13 MB / 164 ms

Each library's runtime is 1-5 MB inlined into every report, and each draws a heatmap cell as a data
row (bokeh and vega-lite grow 12-40 bytes a cell); the canvas page is 40x smaller and 4x faster to
show, and needs no dependency. The page cannot fetch anything: a Content-Security-Policy allows
only its own script and style (by hash), so even a name that slipped past the escaping could not
load or run anything. Text from the bank enters the page only as JSON (``<``, ``>``, ``&`` and ``/``
escaped, so ``</script>`` and ``https://`` never appear in it) and is drawn as text nodes.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import re
from importlib import resources

from ._version import __version__


def _asset(name: str) -> str:
    return resources.files("mptkit").joinpath("_assets", name).read_text(encoding="utf-8")


def _hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii") + "'"


def data_json(data: dict) -> str:
    """``data`` as JSON that is safe inside an HTML ``<script>`` element: ASCII only (U+2028 and
    friends escaped), and ``<``, ``>``, ``&``, ``/`` written as escapes, so no ``</script>``, no
    ``<!--`` and no ``http://`` can appear."""
    text = json.dumps(data, ensure_ascii=True, allow_nan=False, separators=(",", ":"))
    for ch, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("/", "\\/")):
        text = text.replace(ch, esc)
    return text


def render(data: dict) -> bytes:
    """The page for ``data`` (from :func:`mptkit._report.report_data`), as UTF-8 bytes."""
    js, css = _asset("report.js"), _asset("report.css")
    csp = (
        f"default-src 'none'; script-src {_hash(js)}; style-src {_hash(css)}; "
        "img-src 'none'; connect-src 'none'; font-src 'none'; base-uri 'none'; form-action 'none'"
    )
    title = html.escape(data.get("title", "prompt bank"), quote=True)
    values = {
        "CSP": csp,
        "VERSION": html.escape(__version__),
        "TITLE": title,
        "CSS": css,
        "DATA": data_json(data),
        "JS": js,
    }
    # one pass over the skeleton: a marker inside a substituted value (a title) is never replaced
    page = re.sub(r"@@([A-Z]+)@@", lambda m: values[m.group(1)], _asset("report.html"))
    return page.encode("utf-8")
