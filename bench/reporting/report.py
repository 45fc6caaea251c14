"""`results/index.html`: one self-contained page that leads with the answers, then the evidence.

Order: the first screen (bench/reporting/front.py: the two headline questions answered from converged runs,
the forest plot, the converged runs' table), the evidence of each headline question (headline.py,
loss_question.py), every answer per dataset (summary.py), the scaling study's answer with its plots, a table
of contents, then the details: one collapsible part per group of runs in order of authority (budget banner, accuracy, cost, ELCRec
vs ICLRec, time to a target quality, plots), then every other study under the results folder
(bench/reporting/measurements.py) and how to read the tables.

Self-contained means it opens from a file, a mail attachment or a CI artifact alike: CSS inline, plots as
base64 PNG data URIs with alt text, no script, no external address, and no path of the machine it was made
on. `tests/test_report.py` renders it in headless Chromium and checks the screenshot.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass

from bench.reporting.front import Front, front_blocks
from bench.reporting.headline import HEADLINE_DATASET, headline_title
from bench.reporting.loss_question import LOSS_TITLE
from bench.reporting.measurements import Section
from bench.reporting.rendering import Block, Image

CSS = """
body { font-family: "DejaVu Sans", Arial, sans-serif; margin: 24px auto; max-width: 1500px; color: #222;
       font-size: 14px; line-height: 1.4; padding: 0 16px; }
h1 { font-size: 24px; } h2 { font-size: 19px; margin-top: 30px; }
h3 { font-size: 16px; margin-top: 22px; }
section.top { border-top: 2px solid #ccc; }
table { border-collapse: collapse; margin: 8px 0 6px; font-size: 12.5px; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
tr:nth-child(even) td { background: #fafafa; }
#answers { background: #eef4fb; padding: 2px 12px 10px; }
#answers td { background: #fff; } #answers th { background: #dce8f5; }
#answers td:first-child { font-weight: bold; white-space: nowrap; }
#every-answer td { background: #fff; } #every-answer th { background: #f0f0f0; }
#every-answer td:first-child { font-weight: bold; white-space: nowrap; }
#every-answer td:nth-child(3) { min-width: 420px; }
.banner { background: #fff4d6; border-left: 5px solid #e0a800; padding: 8px 12px; font-weight: bold; }
.note { color: #555; font-size: 12.5px; margin: 2px 0 14px; }
.intro { color: #444; max-width: 1200px; }
figure { margin: 6px 0; } figure img { max-width: 100%; border: 1px solid #ddd; display: block; }
.scroll { overflow-x: auto; }
details.part { border-top: 1px solid #ccc; padding: 4px 0; }
details.part > summary { cursor: pointer; } details.part > summary h2 { display: inline; font-size: 17px; }
nav li { margin: 2px 0; }
code { background: #f3f3f3; padding: 0 3px; }
"""


# The browser itself refuses anything but the page's own styles and inline images: no network, no script.
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


@dataclass
class GroupPart:
    """One group of runs on the page: title, anchor, accuracy and cost blocks, plots."""

    title: str
    anchor: str
    accuracy: list[Block]
    cost: list[Block]
    plots: list[Image]


def inline(text: str) -> str:
    """Escape `text` for HTML, keeping the markdown the tables use: **bold**, <u>underline</u>, `code`."""
    out = html.escape(str(text), quote=False)
    out = out.replace("&lt;u&gt;", "<u>").replace("&lt;/u&gt;", "</u>")
    out = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", out)
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", out)


def _table(frame) -> str:
    head = "".join(f"<th>{inline(c)}</th>" for c in frame.columns)
    rows = "".join(
        "<tr>" + "".join(f"<td>{inline('' if v is None or v != v else v)}</td>" for v in row) + "</tr>"
        for row in frame.itertuples(index=False)
    )
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></div>'


def _figure(image: Image) -> str:
    data = base64.b64encode(image.png).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(image.alt)}"'
            f' title="{html.escape(image.name)}"></figure>')


def render_blocks(blocks: list[Block]) -> str:
    out = []
    for kind, content in blocks:
        if kind in ("h1", "h2", "h3"):
            out.append(f"<{kind}>{inline(content)}</{kind}>")
        elif kind == "banner":
            out.append(f'<p class="banner">{inline(content)}</p>')
        elif kind in ("p", "note"):
            out.append(f'<p class="{kind}">{inline(content)}</p>' if kind == "note" else f"<p>{inline(content)}</p>")
        elif kind == "table":
            out.append(_table(content))
        elif kind == "list":
            out.append("<ul>" + "".join(f"<li>{inline(x)}</li>" for x in content) + "</ul>")
        elif kind == "image":
            out.append(_figure(content))
    return "\n".join(out)


def _group_html(part: GroupPart) -> str:
    banner = [b for b in part.accuracy if b[0] == "banner"][:1]  # one banner per group on the page
    body = [
        f'<details class="part" id="{part.anchor}"><summary><h2>{inline(part.title)}</h2></summary>',
        render_blocks(banner),
        "<h3>Accuracy (test split)</h3>",
        render_blocks([b for b in part.accuracy if b[0] != "banner"]),
        "<h3>Cost</h3>",
        render_blocks([b for b in part.cost if b[0] != "banner"]),
        "<h3>Plots</h3>",
        *(_figure(p) for p in part.plots),
        "</details>",
    ]
    return "\n".join(body)


def _section_html(section: Section) -> str:
    return (f'<details class="part" id="{section.anchor}"><summary><h2>{inline(section.title)}</h2></summary>\n'
            f"{render_blocks(section.blocks)}\n</details>")


def _contents(groups: list[GroupPart], sections: list[Section]) -> str:
    def items(entries) -> str:
        return "".join(f'<li><a href="#{e.anchor}">{inline(e.title)}</a></li>' for e in entries)

    return (
        '<nav><p>Groups of runs, most authoritative first (each opens on a click):</p>'
        f"<ol>{items(groups)}</ol><p>Other measurements:</p><ul>{items(sections)}"
        '<li><a href="#reading">How to read the tables</a></li></ul></nav>'
    )


def _headline_anchor(dataset: str) -> str:
    """`headline` on the question's own dataset (the links to it stay), `headline-<dataset>` on the others."""
    return "headline" if dataset == HEADLINE_DATASET else "headline-" + re.sub(r"[^A-Za-z0-9_]+", "-", dataset)


def index_html(front: Front, answers: list[Block], headlines: list[tuple[str, list[Block]]], loss: list[Block],
               scaling: list[Block], groups: list[GroupPart], sections: list[Section], intros: dict[str, str]) -> str:
    """The page; `headlines`: (dataset, blocks) of the headline question per dataset it is answered on, its
    own dataset first; `intros`: title -> how to read a kind of table."""
    images = [b for b in scaling if b[0] == "image"]
    body = [
        "<h1>intent-bench: what the benchmark found</h1>",
        '<section class="top" id="answers"><h2>Answers, from converged runs</h2>',
        render_blocks(front_blocks(front, ("image", front.image))),
        '<p class="note">The evidence follows: each headline question in full, every answer per dataset (pipeline'
        " checks labelled as such), the scaling study, then every group of runs.</p></section>",
        *(f'<section class="top" id="{_headline_anchor(dataset)}"><h2>{inline(headline_title(dataset))}</h2>'
          f"{render_blocks(blocks)}</section>" for dataset, blocks in headlines),
        f'<section class="top" id="loss"><h2>{LOSS_TITLE}</h2>', render_blocks(loss), "</section>",
        '<section class="top" id="every-answer"><h2>Every answer, per dataset</h2>', render_blocks(answers),
        "</section>",
    ]
    if scaling:
        body += [
            '<section class="top" id="scaling"><h2>Scaling: does ELCRec save time as users grow?</h2>',
            render_blocks([b for b in scaling if b[0] != "image"]),
            *(_figure(i[1]) for i in images), "</section>",
        ]
    body += ['<section class="top" id="details"><h2>Details</h2>', _contents(groups, sections), "</section>"]
    body += [_group_html(g) for g in groups]
    body += [_section_html(s) for s in sections]
    reading = "".join(f'<h3>{inline(t)}</h3><p class="intro">{inline(x)}</p>' for t, x in intros.items())
    body.append(f'<details class="part" id="reading"><summary><h2>How to read the tables</h2></summary>{reading}</details>')
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        "<title>intent-bench: what the benchmark found</title>"
        f"<style>{CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )
