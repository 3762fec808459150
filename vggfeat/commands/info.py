"""``vggfeat info``: what a feature store holds and how it was made."""

from __future__ import annotations

import json

import click

from vggfeat.commands.options import json_option

__all__ = ["info", "format_summary"]


def format_summary(summary: dict, show_all: bool = False) -> str:
    """Human-readable text for ``FeatureStore.summary()``."""
    s = summary["settings"]
    lines = [
        f"{summary['path']}  ({summary['format']}, created {summary['created']})",
        f"images: {summary['images']} ({summary['ok']} ok, {len(summary['failed'])} failed, "
        f"{len(summary['changed'])} cropped)",
        f"nets: {', '.join(s['nets'])}   layer: {s['layer']} ({s['dim']}-d)   "
        f"scales Q: {', '.join(map(str, s['scales']))}   flip: {'on' if s['flip'] else 'off'}",
        f"precision: {s['precision']}   interpolation: {s['interpolation']}   "
        f"max side: {s['max_side']}",
    ]
    for net, w in s["weights"].items():
        p = w["preprocess"]
        lines.append(
            f"weights {net}: {w['label']}  sha256 {w['sha256'] or '-'}\n"
            f"  preprocess: {p['name']} ({p['channel_order']}, x{p['scale']:.6g}, "
            f"mean {list(p['mean'])}, std {list(p['std'])})"
        )
    lines.append("versions: " + ", ".join(f"{k} {v}" for k, v in summary["versions"].items()))
    if summary["pending_parts"]:
        lines.append(
            f"WARNING: {summary['pending_parts']} part files from an interrupted run are not yet "
            "in this store: re-run the same extract command to finish it."
        )
    for title, key, field in (("failed", "failed", "reason"), ("cropped", "changed", "note")):
        items = summary[key]
        shown = items if show_all else items[:20]
        if items:
            lines.append(f"{title} ({len(items)}):")
            lines += [f"  {item['id']}: {item[field]}" for item in shown]
            if len(shown) < len(items):
                lines.append(f"  ... {len(items) - len(shown)} more (--all to list them)")
    return "\n".join(lines)


@click.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@json_option
@click.option("--all", "show_all", is_flag=True, help="List every failed and cropped image.")
def info(file: str, as_json: bool, show_all: bool) -> None:
    """Describe the feature store FILE: images, failures, settings, provenance."""
    from vggfeat.store import FeatureStore

    summary = FeatureStore(file).summary()
    click.echo(json.dumps(summary, indent=2) if as_json else format_summary(summary, show_all))
