"""`lowformer report`: one self-contained report.html from export folders' manifests."""
from __future__ import annotations

import click

from lowformer.commands.errors import handle_errors
from lowformer.commands.options import json_option
from lowformer.commands.render import emit_json, print_path


@click.command("report")
@click.argument("folders", nargs=-1, required=True, type=click.Path())
@click.option("--out", default="report.html", show_default=True, type=click.Path(dir_okay=False),
              help="The HTML file to write (self-contained: opens from disk, no network).")
@json_option("Print what the page holds as JSON to stdout.")
@handle_errors
def report_cmd(folders, out, as_json):
    """One self-contained report.html of ARTIFACT_DIR... from their manifests.

    \b
    Artifact table (size, top-1, delta with its interval, agreement, McNemar p, logit cosine,
    latency per runtime and batch), per-block divergence (validate --explain), per-block latency
    (profile), flipped-image gallery (validate), and the machine. Shows only what was recorded.
    """
    from lowformer.report import collect, write_html_report

    data = collect(list(folders))
    path = write_html_report(list(folders), out, data=data)
    if as_json:
        return emit_json({"report": str(path), **data.summary()})
    print_path("report", path)
