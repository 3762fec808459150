"""``vggfeat demo``: the main job end to end on an embedded default data set."""

from __future__ import annotations

from pathlib import Path

import click

from vggfeat.commands.options import scales_option

__all__ = ["demo"]


@click.command()
@click.option(
    "--out-dir",
    default="vggfeat-demo",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Folder for images, store, model, plots.",
)
@click.option(
    "--weights",
    default=None,
    help="Net-D weights; default: imagenet when in the torch hub cache, else random.",
)
@click.option("--per-class", default=20, show_default=True, help="Images per class.")
@scales_option(default="256")
@click.option("--seed", default=0, show_default=True, help="Seed of the drawn images.")
@click.option("--width", default=1.0, hidden=True, help="Channel multiplier (tests only).")
@click.pass_context
def demo(ctx: click.Context, out_dir: str, weights: str | None, per_class: int,
         scales: tuple[int, ...], seed: int, width: float) -> None:  # fmt: skip
    """Draw a small labelled image set (4 texture classes), extract flip-averaged Net-D fc7
    descriptors, choose C per class by 3-fold cross-validation, train one-vs-rest linear SVMs,
    and evaluate on the held-out half: per-class recall, mean class recall, confusion plot."""
    from vggfeat.commands.extract import extract
    from vggfeat.commands.svm import evaluate, fit
    from vggfeat.demo import DEMO_CLASSES, make_demo_dataset
    from vggfeat.weights import imagenet_file

    out = Path(out_dir)
    images, labels = make_demo_dataset(out, per_class, seed)
    click.echo(
        f"drew {per_class * len(DEMO_CLASSES)} images of {', '.join(DEMO_CLASSES)} in {images}"
    )
    if weights is None:
        weights = "imagenet" if imagenet_file("D")[1].exists() else "random"
        if weights == "random":
            click.echo("no cached ImageNet weights (offline?): using RANDOM weights, which still "
                       "separate these textures; pass --weights to choose")  # fmt: skip
    store, model = out / "demo_D.h5", out / "demo_model.h5"
    common = dict(features=(str(store),), labels_path=str(labels))
    ctx.invoke(extract, inputs=(str(images),), root=str(images), nets=("D",), weights=(weights,),
               scales=scales, out=str(store), width=width, workers=1, quiet=False)  # fmt: skip
    ctx.invoke(fit, **common, train_split="train", cs="default", cv=3, out=str(model))
    ctx.invoke(evaluate, **common, model=str(model), test_split="test",
               json_path=str(out / "results.json"), plots=str(out / "plots"))  # fmt: skip
    click.echo(
        f"store {store}, model {model}, results {out / 'results.json'}, plots {out / 'plots'}"
    )
