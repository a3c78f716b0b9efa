"""``pull`` and ``push``."""

from __future__ import annotations

import click

from ._app import emit_json, main, say
from ._opts import adapter_option, config_options, json_option, limit_options


def hub_options(f):
    f = limit_options(f)
    f = click.option("-q", "--quiet", is_flag=True, help="No progress bars (they are off anyway without a terminal).")(
        f
    )
    f = click.option(
        "--token",
        metavar="TOKEN",
        callback=_secret,
        help="Hugging Face token (default: HF_TOKEN or the login cache).",
    )(f)
    return f


def _secret(ctx, param, value):
    """A token is redacted from everything printed from the moment it is read (in every form)."""
    from .._text import remember_secret

    remember_secret(value)
    return value


@main.command()
@click.argument("repo", metavar="REPO[@REV]")
@click.option(
    "-o", "--output", type=click.Path(), help="Copy the bank into this plain folder (default: keep it in the HF cache)."
)
@click.option("--force", is_flag=True, help="Replace an existing --output folder.")
@click.option("--revision", help="Branch, tag or commit (default: main).")
@click.option(
    "--tasks",
    help=(
        "Only these tasks (indices, ranges, names: 0,3,5-7 or sst2,mnli), read with range "
        "requests and written to -o as a bank of their own."
    ),
)
@click.option(
    "--allow-unverified",
    is_flag=True,
    help=("Take files the Hub lists without a usable checksum (refused by default; or MPTKIT_ALLOW_UNVERIFIED=1)."),
)
@hub_options
@json_option
def pull(repo, output, force, revision, tasks, allow_unverified, token, quiet, timeout, deadline, as_json):
    """Download the bank in REPO (owner/repo or hf://owner/repo[@rev][/path]), validate it, and say where it is.

    Only the bank's files are fetched: adapter_config.json with adapter_model.safetensors (or .bin),
    or a single .safetensors file, each checked against the checksum the Hub lists for it. With
    --tasks only those tasks' bytes are fetched and -o names the partial copy (a folder or a
    .safetensors file).

    \b
      mptkit pull owner/bank
      mptkit pull owner/bank@v1 -o bank/
      mptkit pull owner/bank --tasks 0,7 -o two-tasks/
    """
    from .._info import summary
    from .._render import one_line
    from ..hub import pull as run

    bank, got = run(
        repo,
        output,
        revision=revision,
        force=force,
        tasks=tasks,
        token=token,
        quiet=quiet,
        unverified=allow_unverified or None,
        timeout=timeout,
        deadline=deadline,
    )
    local = got.path if output is None else bank.source.path
    s = summary(bank)
    if as_json:
        emit_json(
            {
                "ref": str(got.ref),
                "repo": got.ref.repo_id,
                "revision": got.ref.revision or "main",
                "commit": got.commit,
                "path": local,
                "files": got.files,
                "from_cache_only": got.cached_only,
                "task_names": bank.names() if tasks is not None else None,
                "summary": s,
            }
        )
        return
    how = " from the local cache (offline)" if got.cached_only else ""
    what = f" tasks {', '.join(bank.names())} of" if tasks is not None else ""
    say(
        f"pulled{what} {got.ref} (commit {got.commit[:12]}){how} into {local}"
        + (" (the HF cache)" if output is None else "")
    )
    say(f"  {one_line(s)}")


@main.command()
@click.argument("src")
@click.argument("repo", metavar="REPO")
@click.option("--private", is_flag=True, help="Create the repo as private (an existing repo keeps its visibility).")
@click.option("--revision", help="Branch to commit to (created from main if missing).")
@click.option("-m", "--message", help="Commit message.")
@click.option("--create-pr", is_flag=True, help="Open a pull request instead of committing to the branch.")
@click.option(
    "--no-images",
    is_flag=True,
    help="Leave out the card's pictures (the similarity heatmap and the rank-use chart, images/*.png).",
)
@config_options
@adapter_option
@hub_options
@json_option
def push(
    src,
    repo,
    private,
    revision,
    message,
    create_pr,
    no_images,
    config,
    adapter,
    token,
    quiet,
    timeout,
    deadline,
    as_json,
):
    """Upload SRC to the model repo REPO (owner/repo) as a PEFT adapter folder with a model card.

    The bank is validated first. An adapter folder is uploaded byte for byte; a bare .safetensors file
    is written as an adapter folder first (its config must be known: --task-type, --num-virtual-tokens).
    The card shows two pictures uploaded in the same commit, images/similarity.png (the tasks'
    similarity heatmap) and images/rank-use.png; --no-images leaves them out.

    \b
      mptkit push bank/ owner/my-bank
      mptkit push bank.safetensors owner/my-bank --task-type SEQ_2_SEQ_LM --num-virtual-tokens 10 --private
    """
    from .._io import load
    from ..hub import push as run

    bank = load(src, adapter=adapter).with_config(config)
    images = None
    if not no_images:
        from .._pictures import card_images

        images = card_images(bank)
    out = run(
        bank,
        repo,
        private=private,
        revision=revision,
        message=message,
        create_pr=create_pr,
        token=token,
        quiet=quiet,
        timeout=timeout,
        deadline=deadline,
        images=images,
    )
    if as_json:
        emit_json(out)
        return
    if out["pr_url"]:
        say(f"opened a pull request on {out['repo']}: {out['pr_url']}")
    elif out["changed"]:
        say(f"pushed {src} to {out['repo']}@{out['revision']} (commit {out['commit'][:12]}): {', '.join(out['files'])}")
    else:
        say(
            f"{out['repo']}@{out['revision']} already holds this bank and card (commit "
            f"{str(out['commit'])[:12]}); nothing to push"
        )
