"""``report``: a bank as one self-contained HTML page."""

from __future__ import annotations

import click

from ._app import adapter_option, emit_json, force_option, json_option, main, quiet_option, say


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
    from .._io import load
    from .._report import report_data, report_target, write_page
    from .._report_html import render

    bank = load(src, adapter=adapter)
    target = report_target(output, force=force, inputs=input_paths(bank))  # before the work
    page = render(report_data(bank, src))
    write_page(page, target, force=force)
    out = {"path": str(target), "bytes": len(page), "tasks": bank.num_tasks}
    if as_json:
        emit_json(out)
        return
    say(f"wrote {target}: a report of {bank.num_tasks} task(s), {len(page) / 1e6:.2f} MB; open it in a browser")
