"""``report``: a bank as one self-contained HTML page."""

from __future__ import annotations

import click

from ._app import emit_json, main, say
from ._opts import adapter_option, force_option, json_option, quiet_option


@main.command()
@click.argument("src")
@click.option("-o", "--output", required=True, type=click.Path(), help="The page to write: a path ending in .html.")
@adapter_option
@force_option
@quiet_option
@json_option
def report(src, output, adapter, force, as_json):
    """Write a report of SRC as one HTML file that any browser opens from disk (it fetches nothing).

    The page shows the summary and provenance, a task table (norms, non-finite values, the singular
    values of cols[k] @ rows[k]) that sorts and filters, the similarity heatmap in clustered order
    and a 2-D map of the tasks; hover names the tasks. For many tasks the heatmap shows blocks of
    tasks and the table each task's nearest tasks.

    \b
      mptkit report examples/bank -o report.html
    """
    from .._bank import input_paths
    from .._io import load, plan
    from .._report import report as run

    bank = load(src, adapter=adapter)
    target = plan(output, "report", force=force, inputs=input_paths(bank))  # before the work
    page = run(bank, title=src)
    path = target.write(page)
    if as_json:
        emit_json({"output": str(path), **page.info})
        return
    say(f"wrote {path}: a report of {bank.num_tasks} task(s), {page.info['bytes'] / 1e6:.2f} MB; open it in a browser")
