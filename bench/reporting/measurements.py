"""Everything else measured under the results folder, gathered for the page as its owners wrote it.

Each study is written by the command that owns it: `bench scaling` (results/scaling/, `--from-csv`
regenerates its table and plots), `bench packing` (results/benchmarks/packing-*.md), the speed suite
(pytest-benchmark JSON in results/benchmarks/), `bench tune` (results/studies/<study>/). This module only
reads those files: their markdown becomes blocks, their PNGs images, their JSON small tables. Any other
folder of markdown or PNG files under the results folder is shown as it is.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from bench.reporting.rendering import Block, Image

NOT_STUDIES = {"runs", "checkpoints", "scaling", "benchmarks", "studies"}


@dataclass
class Section:
    """One collapsible part of the page: a title, an anchor and its blocks."""

    title: str
    anchor: str
    blocks: list[Block] = field(default_factory=list)


def parse_markdown(text: str, demote: int = 0) -> list[Block]:
    """The blocks of a generated markdown file: headings (demoted by `demote` levels), tables, lists, paragraphs."""
    blocks: list[Block] = []
    para: list[str] = []
    lines = text.splitlines()

    def flush() -> None:
        if para:  # lines kept apart: a paragraph's first line may be a sentence of its own
            blocks.append(("p", "\n".join(para)))
            para.clear()

    i = 0
    while i < len(lines):
        line = lines[i].strip()
        heading = re.match(r"(#{1,6}) (.*)", line)
        if heading:
            flush()
            blocks.append((f"h{min(3, len(heading.group(1)) + demote)}", heading.group(2)))
        elif line.startswith("|"):
            flush()
            rows = []
            while i < len(lines) and lines[i].strip().startswith("|"):
                rows.append([c.strip() for c in lines[i].strip().strip("|").split("|")])
                i += 1
            body = [r for r in rows[1:] if not all(set(c) <= set("-: ") for c in r)]
            blocks.append(("table", pd.DataFrame(body, columns=rows[0])))
            continue
        elif line.startswith("- "):
            flush()
            items = []
            while i < len(lines) and lines[i].strip().startswith("- "):
                items.append(lines[i].strip()[2:])
                i += 1
            blocks.append(("list", items))
            continue
        elif line:
            para.append(line)
        else:
            flush()
        i += 1
    flush()
    return blocks


def _png_images(folder: Path, what: str) -> list[Block]:
    return [("image", Image(p.name, p.read_bytes(), f"{what}: {p.stem.replace('_', ' ')}"))
            for p in sorted(folder.glob("*.png"))]


# ---------------------------------------------------------------------------------------------- scaling
def _ratio_line(name: str, context_file: Path) -> list[str]:
    """`name`: ELCRec's training step against ICLRec's (median, interquartile range), from context.json."""
    if not context_file.is_file():
        return []
    lines = []
    for key, ctx in sorted(json.loads(context_file.read_text()).items()):
        ratio = ctx.get("step_ratio_elcrec_over_iclrec") or {}
        if "median" not in ratio:
            continue
        steps = (ctx.get("step_samples") or {}).get("elcrec", "?")
        lines.append(
            f"{name} ({key}): ELCRec's training step took {ratio['median']:.2f}x ICLRec's (interquartile range"
            f" {ratio['q25']:.2f}-{ratio['q75']:.2f}x, {steps} timed steps per method)."
        )
    return lines


def _measured_range(table: pd.DataFrame, col: str) -> str:
    values = table[col].tolist()
    return values[0] if len(set(values)) == 1 else f"{min(values, key=_number)} to {max(values, key=_number)}"


def _number(text: str) -> float:
    return float(re.sub(r"[^0-9.eE+-]", "", text.split(" ")[0]) or "nan")


def _scaling_lines(blocks: list[Block]) -> list[str]:
    """One line per section of scaling.md: the measured range of the E-step share and of ELCRec against
    ICLRec, the working memory at the largest N, and the study's own crossover sentence."""
    lines, heading, table = [], None, None
    for kind, content in blocks:
        if kind == "h3":
            heading, table = content, None
        elif kind == "table" and {"N", "kind", "E-step share", "ELCRec vs ICLRec time"} <= set(content.columns):
            table = content
        elif kind == "p" and content.startswith("Crossover") and heading and table is not None:
            measured = table[table["kind"] != "extrapolated"]
            last, far = measured.iloc[-1], table.iloc[-1]
            memory = f"ICLRec {last['ICLRec working mem']}, ELCRec {last['ELCRec working mem']} at N = {last['N']}"
            if far["kind"] == "extrapolated":
                memory += f" ({far['ICLRec working mem']} vs {far['ELCRec working mem']} extrapolated to {far['N']})"
            lines.append(
                f"{heading}: at N = {measured['N'].iloc[0]} to {last['N']} users, ICLRec's E-step is"
                f" {_measured_range(measured, 'E-step share')} of its epoch and ELCRec's epoch"
                f" {_measured_range(measured, 'ELCRec vs ICLRec time')} against ICLRec's; working memory"
                f" {memory}. {content.splitlines()[0]}"
            )
    return lines


def scaling_answer(results_dir: Path) -> list[Block]:
    """The scaling study's answer and its plots, for the top of the page; nothing without the study."""
    folder = Path(results_dir) / "scaling"
    md = folder / "scaling.md"
    if not md.is_file():
        return []
    lines = _scaling_lines(parse_markdown(md.read_text(), demote=1))
    lines += _ratio_line("This study", folder / "context.json")
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        lines += _ratio_line(f"Rerun `scaling/{sub.name}/`", sub / "context.json")
    intro = ("Does ELCRec's epoch become cheaper than ICLRec's as the number of users N grows? From"
             " `scaling/scaling.md` (written by `python -m bench scaling`; `--from-csv` regenerates it):")
    images = sorted(_png_images(folder, "Scaling study"), key=lambda b: "_time_" not in b[1].name)  # time first
    return [("p", intro), ("list", lines), *images]


def _scaling_sections(results_dir: Path) -> list[Section]:
    folder = Path(results_dir) / "scaling"
    out = []
    for sub in [folder, *sorted(p for p in folder.iterdir() if p.is_dir())] if folder.is_dir() else []:
        if (sub / "scaling.md").is_file():
            name = "scaling/" if sub == folder else f"scaling/{sub.name}/"
            blocks = parse_markdown((sub / "scaling.md").read_text(), demote=2)
            # The study's own plots are at the top of the page, beside its answer; its reruns' are here.
            images = [] if sub == folder else _png_images(sub, name)
            out.append(Section(f"Scaling study: `{name}`", f"m-{_slug(name)}", [*blocks, *images]))
    return out


# ---------------------------------------------------------------------------------- benchmarks, studies
def _speed_suite(path: Path) -> list[Block]:
    data = json.loads(path.read_text())
    cpu = (data.get("machine_info") or {}).get("cpu", {}).get("brand_raw", "?")
    rows = [{"benchmark": b["name"], "group": b.get("group") or "", "mean s": f"{b['stats']['mean']:.4g}",
             "median s": f"{b['stats']['median']:.4g}", "std s": f"{b['stats']['stddev']:.2g}",
             "rounds": b["stats"]["rounds"]} for b in data.get("benchmarks", [])]
    blocks: list[Block] = [("h3", f"Speed suite: `{path.name}`"),
                           ("p", f"pytest-benchmark, {cpu}, {data.get('datetime', '?')}."),
                           ("table", pd.DataFrame(rows))]
    ratios = [{"group": r["group"], "published way": r["numerator"], "ours": r["denominator"],
               "ratio": f"{r['ratio']:.2f}x"} for r in data.get("ratios", [])]
    if ratios:
        blocks += [("p", "Published way against ours (mean seconds):"), ("table", pd.DataFrame(ratios))]
    return blocks


def _benchmark_sections(results_dir: Path) -> list[Section]:
    folder = Path(results_dir) / "benchmarks"
    if not folder.is_dir():
        return []
    packing = [b for p in sorted(folder.glob("packing-*.md")) for b in parse_markdown(p.read_text(), demote=2)]
    speed = []
    for path in sorted(folder.glob("*.json")):
        if "benchmarks" in json.loads(path.read_text()):
            speed += _speed_suite(path)
    out = []
    if packing:
        out.append(Section("Packing: concurrent runs on one device (`bench packing`)", "m-packing", packing))
    if speed:
        out.append(Section("Speed suite: ours against the published way (`tox -e bench`)", "m-speed", speed))
    return out


def _study_blocks(folder: Path) -> list[Block]:
    best = json.loads((folder / "best.json").read_text())
    counts = ", ".join(f"{v} {k}" for k, v in (best.get("counts") or {}).items() if v)
    trial = best.get("best_trial") or {}
    params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in (trial.get("params") or {}).items())
    profile = (best.get("profile") or {}).get("name", "?")
    lines = [f"{best.get('method')} on {best.get('dataset')}, {profile} profile; trials: {counts}.",
             f"Best {best.get('metric')}: {trial.get('value', float('nan')):.4f} (trial {trial.get('number')}): {params}."]
    final = best.get("final_run") or {}
    if final.get("test"):
        lines.append(f"Final run `{final.get('record')}`: test NDCG@20 {final['test'].get('NDCG@20', float('nan')):.4f}.")
    blocks: list[Block] = [("h3", f"Tuning study `{best.get('study', folder.name)}`"), ("list", lines)]
    if (folder / "importances.csv").is_file():
        blocks.append(("table", pd.read_csv(folder / "importances.csv").round(4).astype(str)))
    return blocks + _png_images(folder, f"Tuning study {folder.name}")


def _other_sections(results_dir: Path) -> list[Section]:
    out = []
    studies = Path(results_dir) / "studies"
    found = sorted(p.parent for p in studies.glob("*/best.json")) if studies.is_dir() else []
    if found:
        out.append(Section("Tuning studies (`bench tune`)", "m-studies", [b for f in found for b in _study_blocks(f)]))
    for folder in sorted(p for p in Path(results_dir).iterdir() if p.is_dir() and p.name not in NOT_STUDIES):
        blocks = [b for p in sorted(folder.glob("*.md")) for b in parse_markdown(p.read_text(), demote=2)]
        blocks += _png_images(folder, folder.name)
        if blocks:
            out.append(Section(f"`{folder.name}/`", f"m-{_slug(folder.name)}", blocks))
    return out


def _slug(text: str) -> str:
    return "-".join("".join(ch if ch.isalnum() else " " for ch in text).split()) or "root"


def measurement_sections(results_dir: Path) -> list[Section]:
    """The studies under the results folder other than the run records, in a fixed order."""
    return [*_scaling_sections(results_dir), *_benchmark_sections(results_dir), *_other_sections(results_dir)]
