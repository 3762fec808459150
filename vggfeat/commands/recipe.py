"""``vggfeat recipe``: list the paper's protocols, and run one end to end on a dataset root."""

from __future__ import annotations

import click

from vggfeat.commands.options import extraction_options, parse_scales

__all__ = ["recipe"]


@click.group()
def recipe() -> None:
    """The paper's transfer protocols (Tables 11 and 12) end to end: list, run.

    \b
    Example (Caltech-101, Net-D and Net-E, three random splits):
      vggfeat recipe run caltech101 --root 101_ObjectCategories --workdir runs/c101
      vggfeat recipe run caltech101 --root 101_ObjectCategories --workdir runs/again \\
          --splits runs/c101/splits          # the same splits again
    """


@recipe.command("list")
def list_() -> None:
    """The recipes, each with its protocol in one line."""
    from vggfeat.recipes import RECIPES

    width = max(len(name) for name in RECIPES)
    for name, r in RECIPES.items():
        click.echo(f"{name:<{width}}  {r.protocol}")


@recipe.command()
@click.argument("name")
@click.option(
    "--root",
    required=True,
    type=click.Path(),
    help="The dataset root: a VOC year "
    "folder (VOCdevkit/VOC2012) or the folder of class folders (Caltech).",
)
@click.option(
    "--nets",
    help="Nets, comma-separated, in fusion order [default: D,E, or the net "
    "a single weights file holds (demo: D)].",
)
@click.option(
    "--weights",
    multiple=True,
    default=("imagenet",),
    show_default=True,
    help="imagenet, demo, random, or a weights file; NET=SOURCE sets one net's weights (repeat).",
)
@click.option(
    "--workdir",
    type=click.Path(file_okay=False),
    help="Where the stores (one per net), splits, "
    "results, plots and server files go; a rerun resumes [default: runs/NAME].",
)
@click.option(
    "--splits",
    "splits_dir",
    type=click.Path(exists=True, file_okay=False),
    help="Reuse the splits of an earlier run (its WORKDIR/splits) instead of drawing them.",
)
@click.option(
    "--scales",
    callback=parse_scales,
    help="Q, comma-separated [default: the "
    "paper's for the recipe]; fewer scales are faster and reported as a "
    "difference.",
)
@click.option(
    "--Cs",
    "cs",
    help="The C grid, comma-separated [default: the built-in grid]; C is chosen per class "
    "from it as the recipe says (holdout or 3-fold CV). A smaller grid is faster and reported.",
)
@extraction_options
@click.option("--width", default=1.0, hidden=True, help="Channel multiplier (tests only).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar or notes.")
def run(
    name,
    root,
    nets,
    weights,
    workdir,
    splits_dir,
    scales,
    cs,
    preprocess,
    seed,
    batch_size,
    workers,
    device,
    precision,
    winograd,
    max_side,
    checkpoint_every,
    width,
    quiet,
) -> None:
    """Run recipe NAME on --root: extract (resumable), fit and score every SVM variant, print
    the table beside the paper's with each stage's time; JSON, plots, splits and (given test
    images) server files go to --workdir."""
    from pathlib import Path

    from vggfeat.commands.extract import load_requested_weights
    from vggfeat.commands.svm import _parse_cs, _warnings_as_lines
    from vggfeat.extract import ExtractConfig
    from vggfeat.recipes import RECIPES, run_recipe
    from vggfeat.store import printable

    if name not in RECIPES:
        raise click.UsageError(
            f"Unknown recipe {name!r}; choose one of {', '.join(RECIPES)} (`vggfeat recipe list`)."
        )
    r = RECIPES[name]
    loaded = load_requested_weights(nets, weights, ["D", "E"], preprocess, seed, width)
    config = ExtractConfig(
        scales=scales or r.scales,
        device=device,
        batch_size=batch_size,
        workers=workers,
        precision=precision,
        winograd=winograd,
        max_side=max_side,
    )
    workdir = Path(workdir or Path("runs") / name)

    def log(line: str) -> None:
        if not quiet:
            click.echo(printable(line), err=True)

    for w in loaded:
        log(f"net {w.net}: {w.label}, {w.preprocess.name} preprocessing")
    with _warnings_as_lines():
        done = run_recipe(
            r,
            root,
            workdir,
            loaded,
            config,
            splits_dir=splits_dir,
            cs=_parse_cs(cs),
            progress=not quiet,
            log=log,
            rows_per_part=checkpoint_every,
        )
    click.echo(done.table)
    click.echo(
        f"Wrote {workdir / 'results.json'}, {workdir / 'table.txt'}, plots and splits in {workdir}."
    )
