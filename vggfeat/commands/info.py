"""``vggfeat info``: what a feature store holds, how it was made, and whether it is intact."""

from __future__ import annotations

import json
from pathlib import Path

import click

from vggfeat.commands.options import json_option

__all__ = ["info", "format_summary", "format_pending"]

RETRY_NOTE = (
    "failed images are extracted again by the next `vggfeat extract` run on this store "
    "(--no-retry-failed keeps them as they are)"
)


def format_pending(summary: dict) -> str:
    """Human-readable text for ``pending_summary()``: a store an interrupted run left as parts."""
    unreadable = summary["unreadable_parts"]
    return (
        f"{summary['path']} does not exist yet: an interrupted run left "
        f"{summary['pending_parts']} part files ({summary['images_in_parts']} images"
        f"{f', {unreadable} parts unreadable' if unreadable else ''}) in "
        f"{summary['path']}.parts/. Run the same `vggfeat extract` command to finish it."
    )


def format_summary(summary: dict, show_all: bool = False) -> str:
    """Human-readable text for ``FeatureStore.summary()``."""
    from vggfeat.store import printable

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
    if summary.get("shards"):
        lines.append(f"merged store: descriptors read from {len(summary['shards'])} shards")
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
            lines += [f"  {printable(item['id'])}: {printable(item[field])}" for item in shown]
            if len(shown) < len(items):
                lines.append(f"  ... {len(items) - len(shown)} more (--all to list them)")
    if summary["failed"]:
        lines.append(RETRY_NOTE)
    if "verify" in summary:
        problems = summary["verify"]["problems"]
        lines.append(f"verify: {'ok, every checksum matches' if not problems else 'DAMAGED'}")
        lines += [f"  {printable(p)}" for p in problems]
    return "\n".join(lines)


@click.command()
@click.argument("file", type=click.Path(dir_okay=False))
@json_option
@click.option("--all", "show_all", is_flag=True, help="List every failed and cropped image.")
@click.option(
    "--verify",
    is_flag=True,
    help="Read everything (pending parts and shards too) and check every checksum; exit 1 "
    "if anything is damaged.",
)
def info(file: str, as_json: bool, show_all: bool, verify: bool) -> None:
    """Describe the feature store FILE: images, failures, settings, provenance.

    For a store whose first run was interrupted (no FILE yet, parts beside it), say what the
    parts hold and how to finish it.
    """
    from vggfeat.errors import StoreError
    from vggfeat.store import FeatureStore, pending_parts, pending_summary

    if not Path(file).exists() and pending_parts(file):
        summary = pending_summary(file)
        problems = _verify_parts(file) if verify else []
        if verify:
            summary["verify"] = {"problems": problems}
        click.echo(json.dumps(summary, indent=2) if as_json else format_pending(summary))
        for problem in problems if not as_json else []:
            click.echo(f"  damaged: {problem}")
    else:
        store = FeatureStore(file)
        summary = store.summary()
        problems = [str(p) for p in store.verify()] + _verify_parts(file) if verify else []
        if verify:
            summary["verify"] = {"problems": problems}
        click.echo(json.dumps(summary, indent=2) if as_json else format_summary(summary, show_all))
    if problems:
        raise StoreError(
            f"{file}: {len(problems)} damaged datasets or parts (listed above): run the same "
            "`vggfeat extract` command with --verify to extract their images again."
        )


def _verify_parts(file: str) -> list[str]:
    from vggfeat.errors import StoreError
    from vggfeat.store import FeatureStore, pending_parts

    problems = []
    for part in pending_parts(file):
        try:
            problems += [str(p) for p in FeatureStore(part).verify()]
        except StoreError as exc:
            problems.append(str(exc))
    return problems
