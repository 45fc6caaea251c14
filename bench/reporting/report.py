"""`results/index.html`: one self-contained page with every table and plot of the leaderboard.

Self-contained means it opens from a file, a mail attachment or a CI artifact alike: CSS inline, plots as
base64 PNG data URIs, no script, no external address, and no path of the machine it was made on. The
content is the same blocks as leaderboard.md and cost.md (bench/reporting/leaderboard.py builds both), laid out per
group: budget banner, accuracy, cost, ELCRec vs ICLRec, then the four plots. `tests/test_report.py`
renders it in headless Chromium and checks the screenshot.
"""

from __future__ import annotations

import base64
import html
import re

CSS = """
body { font-family: "DejaVu Sans", Arial, sans-serif; margin: 24px auto; max-width: 1500px; color: #222;
       font-size: 14px; line-height: 1.4; padding: 0 16px; }
h1 { font-size: 24px; } h2 { font-size: 19px; border-top: 2px solid #ccc; padding-top: 14px; margin-top: 34px; }
h3 { font-size: 16px; margin-top: 22px; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 12.5px; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
tr:nth-child(even) td { background: #fafafa; }
.banner { background: #fff4d6; border-left: 5px solid #e0a800; padding: 8px 12px; font-weight: bold; }
.intro { color: #444; max-width: 1200px; }
.plots img { max-width: 100%; border: 1px solid #ddd; margin: 6px 0; display: block; }
.scroll { overflow-x: auto; }
nav li { margin: 2px 0; }
code { background: #f3f3f3; padding: 0 3px; }
"""


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


def render_blocks(blocks: list) -> str:
    out = []
    for kind, content in blocks:
        if kind in ("h1", "h2", "h3"):
            out.append(f"<{kind}>{inline(content)}</{kind}>")
        elif kind == "banner":
            out.append(f'<p class="banner">{inline(content)}</p>')
        elif kind == "p":
            out.append(f"<p>{inline(content)}</p>")
        elif kind == "table":
            out.append(_table(content))
        elif kind == "list":
            out.append("<ul>" + "".join(f"<li>{inline(x)}</li>" for x in content) + "</ul>")
    return "\n".join(out)


def _img(name: str, png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}" title="{html.escape(name)}">'


def index_html(
    header, accuracy_intro, cost_intro, groups, acc_blocks, cost_blocks, plots, files, title_of, plot_titles
) -> str:
    """The page: header, contents, then per group its banner, tables and plots (`plot_titles`: kind -> title)."""
    anchors = {key: f"g{i}" for i, key in enumerate(groups)}
    nav = "".join(f'<li><a href="#{anchors[k]}">{inline(title_of(k))}</a></li>' for k in groups)
    body = [
        "<h1>intent-bench: leaderboard and cost</h1>",
        f"<p>{inline(header)}</p>",
        f"<nav><ul>{nav}</ul></nav>",
        f'<details><summary>How to read the accuracy tables</summary><p class="intro">{inline(accuracy_intro)}</p></details>',
        f'<details><summary>How to read the cost tables</summary><p class="intro">{inline(cost_intro)}</p></details>',
    ]
    for key in groups:
        acc = list(acc_blocks[key])
        cost = [b for b in cost_blocks[key] if b[0] != "banner"]  # one banner per group on the page
        body.append(f'<h2 id="{anchors[key]}">{inline(title_of(key))}</h2>')
        body.append(render_blocks(acc[:1] if acc and acc[0][0] == "banner" else []))
        body.append("<h3>Accuracy (test split)</h3>")
        body.append(render_blocks([b for b in acc if b[0] != "banner"]))
        body.append("<h3>Cost</h3>")
        body.append(render_blocks(cost))
        body.append('<div class="plots">')
        for kind, name in plots[key].items():
            body.append(f"<h3>{inline(plot_titles[kind])}</h3>")
            body.append(_img(name, files[name], f"{plot_titles[kind]}: {title_of(key)}"))
        body.append("</div>")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        "<title>intent-bench leaderboard</title>"
        f"<style>{CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )
