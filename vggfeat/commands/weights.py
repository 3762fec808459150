"""``vggfeat weights``: list the known weight sources, describe a weight file, import Oxford's."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from vggfeat.commands.options import json_option

__all__ = ["describe_file", "format_description", "format_sources", "known_sources", "weights"]


def _oxford_net(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """Click callback: 'D', 'vgg16'... -> 'D'; only the nets Oxford released."""
    from vggfeat.errors import VggfeatError
    from vggfeat.nets import canonical_net

    try:
        net = canonical_net(value)
    except VggfeatError as exc:
        raise click.BadParameter(str(exc)) from None
    if net not in ("D", "E"):
        raise click.BadParameter(
            f"Oxford released nets D (vgg16) and E (vgg19) only, not {value!r}."
        )
    return net


def known_sources(extra_dirs: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Every weight source vggfeat knows, and whether it is on this machine.

    torchvision's IMAGENET1K_V1 files are looked for in the torch hub cache; the Oxford releases
    and their imports in ``extra_dirs``, ``$TORCH_HOME/vggfeat``, the current folder and Keras'
    cache (``~/.keras/models``).
    """
    from vggfeat import oxford
    from vggfeat.nets import TORCHVISION_NAMES
    from vggfeat.weights import imagenet_file

    rows: list[dict[str, Any]] = []
    for net in ("D", "E"):
        url, path = imagenet_file(net)
        rows.append(
            {
                "name": f"imagenet-{TORCHVISION_NAMES[net]}",
                "net": net,
                "kind": "torchvision IMAGENET1K_V1 (retrained; torchvision preprocessing)",
                "file": path.name,
                "present": path.is_file(),
                "status": "cached" if path.is_file() else "not cached",
                "path": str(path),
                "url": url,
                "use": f"--weights imagenet --net {net}  (downloads on first use)",
            }
        )
    dirs = oxford.search_dirs(extra_dirs)
    for entry in oxford.OXFORD_FILES:
        found = oxford.find_file(entry.filename, dirs)
        out = oxford.oxford_dir() / oxford.converted_name(entry.net)
        rows.append(
            {
                "name": f"oxford-{entry.format}-{TORCHVISION_NAMES[entry.net]}",
                "net": entry.net,
                "kind": f"original Oxford release, {entry.format} (needs `weights import`)",
                "file": entry.filename,
                "present": found is not None,
                "status": "found" if found else "missing",
                "path": str(found) if found else None,
                "url": entry.url,
                "page": entry.page,
                "use": f"vggfeat weights import {found or entry.filename} --net {entry.net} "
                f"--out {out}",
            }
        )
    for net in ("D", "E"):
        name = oxford.converted_name(net)
        found = oxford.find_file(name, dirs)
        rows.append(
            {
                "name": f"oxford-{TORCHVISION_NAMES[net]}",
                "net": net,
                "kind": "imported Oxford weights (caffe preprocessing: the paper's numbers)",
                "file": name,
                "present": found is not None,
                "status": "imported" if found else "not imported",
                "path": str(found) if found else None,
                "url": None,
                "use": f"--weights {found or oxford.oxford_dir() / name} --net {net}",
            }
        )
    return rows


def format_sources(rows: list[dict[str, Any]]) -> str:
    """Text table of ``known_sources`` with, for each, where it is or how to get it."""
    width = max(len(r["name"]) for r in rows)
    lines = []
    for r in rows:
        status = f"{r['status']}: {r['path']}" if r["present"] else r["status"]
        lines.append(f"{r['name']:<{width}}  net {r['net']}  {r['kind']}")
        lines.append(f"{'':<{width}}  {r['file']}  [{status}]")
        if not r["present"] and r.get("url") and r["name"].startswith("oxford-"):
            lines.append(f"{'':<{width}}  get it from {r['url']}")
        lines.append(f"{'':<{width}}  use: {r['use']}")
    return "\n".join(lines)


def _describe_weights(w: Any, path: Path, kind: str) -> dict[str, Any]:
    from vggfeat.nets import TORCHVISION_NAMES

    out = {
        "file": str(path),
        "kind": kind,
        "net": w.net,
        "torchvision_name": TORCHVISION_NAMES.get(w.net),
        "width": w.width,
        "num_classes": w.num_classes,
        "sha256": w.sha256,
        "preprocess": w.preprocess.to_dict(),
        "origin": w.origin,
    }
    if w.classes:
        out["classes"] = list(w.classes)
    return out


def _training(path: Path) -> dict[str, Any] | None:
    """The training record of a vggfeat checkpoint (None for other files)."""
    from vggfeat.weights import read_checkpoint

    _, meta = read_checkpoint(path)
    if "training" not in meta:
        return None
    return {**meta["training"], "storage_dtype": meta.get("storage_dtype", "float32")}


def describe_file(path: str | Path, format: str = "auto") -> dict[str, Any]:
    """What a weight file holds: our ``.safetensors``, a torch ``.pth``, or an Oxford release
    (read as ``format``: 'caffe', 'keras' or 'auto')."""
    from vggfeat import oxford
    from vggfeat.weights import (
        DEMO_WEIGHTS,
        demo_weights_file,
        infer_net,
        load_weights,
        read_weights_metadata,
    )

    if str(path) == DEMO_WEIGHTS:
        path = demo_weights_file()
    path = Path(path)
    if not path.is_file():
        from vggfeat.errors import WeightsError

        raise WeightsError(f"{path} does not exist: give a weights file, or demo.")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        net = read_weights_metadata(path)["net"]
        return _describe_weights(load_weights(str(path), net), path, "vggfeat weights")
    if suffix in (".pth", ".pt"):
        net = infer_net(path)
        training = _training(path)
        kind = "vggfeat training checkpoint" if training else "torch state dict"
        d = _describe_weights(load_weights(str(path), net), path, kind)
        if training:
            d["training"] = training
        return d
    found = oxford.inspect_source(path, format)
    net = found["net"]
    found["kind"] = f"Oxford release ({found['format']}): import it before use"
    found["import"] = (
        f"vggfeat weights import {path} --net {net or 'D|E'} --out "
        f"{oxford.converted_name(net or 'D')}"
    )
    return found


def format_description(d: dict[str, Any]) -> str:
    """Text for ``describe_file``."""
    from vggfeat.nets import TORCHVISION_NAMES

    lines = [f"file        {d['file']}", f"kind        {d['kind']}"]
    if "preprocess" in d:
        p = d["preprocess"]
        name = f" ({d['torchvision_name']})" if d["torchvision_name"] else ""
        width = "" if d["width"] == 1 else f", width {d['width']:g}"
        lines += [
            f"net         {d['net']}{name}{width}, {d['num_classes']} classes",
            f"sha256      {d['sha256']}",
            (
                f"preprocess  {p['name']}: {p['channel_order']}, pixels 0..255 x {p['scale']:.6g}, "
                f"mean {list(p['mean'])}, std {list(p['std'])}"
            ),
        ]
        origin = d["origin"] or {}
        lines.append("origin      " + (", ".join(f"{k}={v}" for k, v in origin.items()) or "-"))
        if d.get("training"):
            lines += format_training(d["training"])
    else:
        net = d["net"]
        lines += [
            f"net         {net} ({TORCHVISION_NAMES[net]})"
            if net
            else "net         unknown (not a VGG16/VGG19 layout)",
            f"sha256      {d['sha256']}",
            f"layers      {len(d['layers'])} with weights"
            + ("" if d["has_fc"] else " (no fc layers: a notop file, cannot give fc7)"),
            f"import      {d['import']}",
        ]
    return "\n".join(lines)


def format_training(t: dict[str, Any]) -> list[str]:
    """Text lines of a training record: data, settings, result and the per-epoch table."""
    from vggfeat.report import format_table

    c, data = t["config"], t["data"]
    scale = c["scale"][0] if c["scale"][0] == c["scale"][1] else f"{c['scale'][0]}:{c['scale'][1]}"
    lines = [
        f"trained on  {data['n_train']} images of {len(t['classes'])} classes ({data['train']}); "
        f"val {data['n_val']} images ({data['val']})",
        f"settings    batch {c['batch_size']}, lr {c['lr']:g}, momentum {c['momentum']:g}, "
        f"weight decay {t['weight_decay']}, dropout {c['dropout']:g}, scale {scale}, crop "
        f"{c['crop']}, flip {c['flip']}, colour shift {c['colour_shift']:g}, init {t['init']}, "
        f"seed {c['seed']}, {t['world_size']} process(es)",
        f"schedule    {len(t['epochs'])} epochs, {t['global_step']} steps, {t['lr_drops']} LR "
        f"drops{', stopped on a plateau' if t['stopped'] else ''}",
        f"validation  {t['validation']}",
    ]
    final = t.get("final_val")
    if final:
        lines.append(
            f"final val   top-1 error {100 * final['val_top1_error']:.2f}%, top-5 error "
            f"{100 * final['val_top5_error']:.2f}%; weights {final['weights']}"
        )
    if t.get("bad_images"):
        lines.append(f"bad images  {len(t['bad_images'])} skipped (e.g. "
                     f"{next(iter(t['bad_images']))})")  # fmt: skip
    if t["epochs"]:
        rows = [
            [e["epoch"], f"{e['lr']:.0e}", f"{e['train_loss']:.4f}",
             f"{100 * e['train_top1_error']:.1f}", f"{e['val_loss']:.4f}",
             f"{100 * e['val_top1_error']:.1f}", f"{100 * e['val_top5_error']:.1f}",
             f"{e['images_per_second']:.1f}"]
            for e in t["epochs"]
        ]  # fmt: skip
        headers = ["epoch", "lr", "train loss", "train top-1 %", "val loss", "val top-1 %",
                   "val top-5 %", "img/s"]  # fmt: skip
        lines += ["", *format_table(headers, rows).splitlines()]
    return lines


format_option = click.option(
    "--format",
    "fmt",
    type=click.Choice(["auto", "caffe", "keras"]),
    default="auto",
    show_default=True,
    help="How to read an Oxford release: auto tells Keras HDF5 from a Caffe protobuf.",
)


@click.group()
def weights() -> None:
    """Weight files: list the known sources, describe a file, import the Oxford releases."""


@weights.command("list")
@click.option(
    "--dir",
    "dirs",
    multiple=True,
    type=click.Path(file_okay=False),
    help="Also look here for Oxford files (repeatable).",
)
@json_option
def list_(dirs: tuple[str, ...], as_json: bool) -> None:
    """List the weight sources and whether each is on this machine.

    Oxford files are looked for in --dir, $TORCH_HOME/vggfeat (default ~/.cache/torch/vggfeat),
    the current folder and ~/.keras/models.
    """
    rows = known_sources(dirs)
    click.echo(json.dumps(rows, indent=2) if as_json else format_sources(rows))


@weights.command("info")
@click.argument("file")
@format_option
@json_option
def info(file: str, fmt: str, as_json: bool) -> None:
    """Describe the weight FILE: net, preprocessing, sha256 and origin.

    FILE is a vggfeat .safetensors file, a torch .pth/.pt state dict or vggfeat training
    checkpoint (whose training record is shown), `demo` (the trained demo net in the package),
    or an Oxford release (.caffemodel or Keras .h5), which is shown as found and must be
    imported before use.
    """
    d = describe_file(file, fmt)
    click.echo(json.dumps(d, indent=2) if as_json else format_description(d))


@weights.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--net",
    required=True,
    metavar="D|E",
    callback=_oxford_net,
    help="The net FILE holds: D (vgg16) or E (vgg19). Checked against the file.",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    default=None,
    help="Output .safetensors file [default: $TORCH_HOME/vggfeat/oxford_vgg16.safetensors "
    "or oxford_vgg19.safetensors].",
)
@format_option
@click.option("--force", is_flag=True, help="Replace --out if it exists.")
def import_(file: str, net: str, out: str | None, fmt: str, force: bool) -> None:
    """Convert an original Oxford VGG release (Caffe or Keras) into vggfeat's weight file.

    The result carries the Caffe preprocessing (BGR, 0..255 minus the mean pixel) and its
    origin, so `--weights OUT` reproduces the paper's descriptors.
    """
    from vggfeat import oxford
    from vggfeat.errors import WeightsError

    target = Path(out) if out else oxford.oxford_dir() / oxford.converted_name(net)
    if target.exists() and not force:
        raise WeightsError(f"{target} exists: pass --force to replace it, or choose another --out.")
    click.echo(f"Converting {file} (net {net}) ...", err=True)
    result = oxford.import_weights(file, net, target, fmt)
    click.echo(f"Wrote {result.path} ({result.origin['format']}, sha256 {result.sha256})")
    click.echo(f"Use it with: --weights {result.path} --net {net}")
