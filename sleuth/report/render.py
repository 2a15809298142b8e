"""The report's outputs: Markdown, and a self-contained HTML visual report (mind map of the outline and
findings, charts of the numbers found, comparison tables, source cards with the quoted text).

References are numbered in order of first citation. The HTML inlines its CSS, data and the JavaScript
vendored from npm in ``sleuth/report/vendor`` (Chart.js, jsMind; their licenses beside them): it opens from a
file, offline, with no CDN.
"""

from __future__ import annotations

import html
import json
from importlib import resources
from typing import Any

from sleuth.report.lang import labels as lang_labels
from sleuth.report.plan import Plan
from sleuth.report.research import Finding, Passage
from sleuth.report.write import SectionResult


def references(sections: list[SectionResult], passages: dict[str, Passage]) -> list[dict[str, Any]]:
    refs: dict[str, dict[str, Any]] = {}
    for sec in sections:
        for s in sec.sentences:
            for c in s.cites:
                r = refs.get(c["url"])
                if r is None:
                    p = passages.get(c["url"])
                    r = refs[c["url"]] = {"n": len(refs) + 1, "url": c["url"], "title": p.title if p else c["url"],
                                          "quotes": [], "sections": []}
                if not any(c["quote"] in q for q in r["quotes"]):
                    # a longer quote holding earlier ones replaces them (a sentence pair after its sentence)
                    r["quotes"] = [q for q in r["quotes"] if q not in c["quote"]] + [c["quote"]]
                if sec.title not in r["sections"]:
                    r["sections"].append(sec.title)
    return list(refs.values())


def _marks(s, nums: dict[str, int]) -> str:
    return "".join(f"[{nums[c['url']]}]" for c in s.cites)


def markdown(title: str, request: str, plan: Plan, sections: list[SectionResult], refs: list[dict[str, Any]],
             stats: dict[str, Any], lang: str) -> str:
    L = lang_labels(lang)
    nums = {r["url"]: r["n"] for r in refs}
    out = [f"# {title}", "", f"> {request.splitlines()[0]}", ""]
    for note in notes(plan, sections):
        out += [f"*{note}*", ""]
    for sec in sections:
        out += [f"## {sec.title}", ""]
        if sec.status == "failed":
            out += [f"**This section could not be written:** {sec.error}", ""]
            continue
        if sec.note:
            out += [f"*{sec.note}*", ""]
        body = []
        for s in sec.sentences:
            t = s.text if s.text.endswith((".", "!", "?")) else s.text + "."
            t = t[:-1] + _marks(s, nums) + t[-1] if s.cites else t
            body.append(t if s.status == "verified" else f"{t} **[{L['unverified']}]**")
        out += [" ".join(body), ""]
    out += [f"## {L['references']}", ""]
    for r in refs:
        out.append(f"[{r['n']}] {r['title']} — <{r['url']}>" if r["title"] != r["url"] else f"[{r['n']}] <{r['url']}>")
        for q in r["quotes"]:
            out.append(f"    > “{q}”")
        out.append("")
    out += ["---", stats_line(stats), ""]
    return "\n".join(out)


def notes(plan: Plan, sections: list[SectionResult]) -> list[str]:
    out = []
    if plan.source == "repaired":
        out.append(f"Outline: the model's sections, topped up by sleuth from the request, because the model wrote "
                   f"too few usable sections in {plan.attempts} attempt(s).")
    if plan.source == "fallback":
        why = plan.problems[-1].split(" (the model wrote")[0].split(": ", 1)[-1] if plan.problems else ""
        out.append(f"Outline: built by sleuth from the request, because the model's outline could not be used "
                   f"after {plan.attempts} attempt(s)" + (f" (last: {why})" if why else "") + ".")
    failed = [s.title for s in sections if s.status == "failed"]
    if failed:
        out.append(f"{len(failed)} section(s) could not be written and are reported as failed: {', '.join(failed)}.")
    unverified = sum(s.status == "unverified" for sec in sections for s in sec.sentences)
    if unverified:
        out.append(f"{unverified} sentence(s) that no source the agent read supports are marked unverified.")
    return out


def stats_line(st: dict[str, Any]) -> str:
    cost = f", cost {st['cost']:.4f}" if st.get("cost") is not None else ""
    return (f"{st['words']} words, {st['sections']} sections, {st['citations_kept']} citations to "
            f"{st['unique_sources']} sources (all verified against what the agent read; the writer's own "
            f"citations: {st['citations_verified']}/{st['citations_written']} verified as written), "
            f"{st['unverified_sentences']} unverified and {st['removed_sentences']} removed sentence(s), "
            f"{st['research_questions']} research questions, {st['search_queries']} searches, "
            f"{st['tokens']['total_tokens']} tokens ({st['tokens']['prompt_tokens']} prompt, "
            f"{st['tokens']['completion_tokens']} completion){cost}, {st['seconds']:.0f} s.")


# ------------------------------------------------------------------------------------------ HTML

def _vendor(name: str) -> str:
    return (resources.files("sleuth.report") / "vendor" / name).read_text(encoding="utf-8")


def _script_json(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False).replace("</", "<\\/")


def _e(s: Any) -> str:
    return html.escape(str(s), quote=True)


def mindmap_data(title: str, sections: list[SectionResult], findings: list[Finding], L: dict[str, str]) -> dict:
    """jsMind node tree: the title, its sections, their research questions, and each question's finding."""
    kids = []
    for i, sec in enumerate(sections):
        qs = []
        for j, f in enumerate(x for x in findings if x.section == sec.index):
            ans = (f.answer or L["no_finding"]).strip()
            qs.append({"id": f"q{i}_{j}", "topic": _short(f.question, 34), "children": [
                {"id": f"a{i}_{j}", "topic": _short(ans, 28)}]})
        kids.append({"id": f"s{i}", "topic": _short(sec.title, 28), "direction": "right" if i % 2 == 0 else "left",
                     "children": qs})
    return {"meta": {"name": "sleuth"}, "format": "node_tree",
            "data": {"id": "root", "topic": _short(title, 32), "children": kids}}


def _short(text: str, n: int) -> str:
    """One line of at most ``n`` characters (the map shows the outline; the report holds the full text)."""
    text = " ".join(text.split())
    return text if len(text) <= n else text[:n - 1].rstrip() + "…"


def html_report(title: str, request: str, plan: Plan, sections: list[SectionResult], refs: list[dict[str, Any]],
                findings: list[Finding], chart_list: list[dict[str, Any]], facts: list[dict[str, Any]],
                stats: dict[str, Any], lang: str) -> str:
    L = lang_labels(lang)
    nums = {r["url"]: r["n"] for r in refs}
    parts = [f"<header><h1>{_e(title)}</h1><p class='request'>{_e(request.splitlines()[0])}</p>"]
    for note in notes(plan, sections):
        parts.append(f"<p class='note'>{_e(note)}</p>")
    parts.append(f"<p class='stats'>{_e(stats_line(stats))}</p></header>")
    toc = "".join(f"<li><a href='#sec{i}'>{_e(s.title)}</a></li>" for i, s in enumerate(sections))
    parts.append(f"<nav><h2>{_e(L['contents'])}</h2><ol>{toc}</ol></nav>")
    parts.append(f"<section id='mindmap-section'><h2>{_e(L['mindmap'])}</h2><div id='mindmap'></div></section>")
    for i, sec in enumerate(sections):
        parts.append(f"<section class='report-section status-{sec.status}' id='sec{i}'><h2>{_e(sec.title)}</h2>")
        if sec.status == "failed":
            parts.append(f"<p class='failed'>This section could not be written: {_e(sec.error)}</p></section>")
            continue
        if sec.note:
            parts.append(f"<p class='note'>{_e(sec.note)}</p>")
        body = []
        for s in sec.sentences:
            marks = "".join(f"<a class='cite' href='#ref{nums[c['url']]}' title='{_e(c['quote'][:300])}'>"
                            f"[{nums[c['url']]}]</a>" for c in s.cites)
            cls = "unverified" if s.status != "verified" else s.how
            flag = f" <span class='flag'>[{_e(L['unverified'])}]</span>" if s.status != "verified" else ""
            body.append(f"<span class='s {cls}'>{_e(s.text)}{marks}{flag}</span>")
        parts.append(f"<p>{' '.join(body)}</p></section>")
    # numbers: charts and their table
    parts.append(f"<section id='numbers'><h2>{_e(L['numbers'])}</h2>")
    if facts:
        for k, ch in enumerate(chart_list):
            d = ch.get("derived")
            derived = (f"Computed with the code tool: highest {d['max']:g} ({_e(d['max_label'])}), lowest "
                       f"{d['min']:g} ({_e(d['min_label'])}), range {d['range']:g}, mean {d['mean']:g}"
                       + (f", ratio {d['ratio']:g}×" if d.get("ratio") else "") + "." if d else
                       _e(ch.get("derived_error", "")))
            parts.append(f"<figure class='chart'><div class='chart-box'><canvas id='chart{k}'></canvas></div>"
                         f"<figcaption>{_e(ch['unit'])} — {derived}</figcaption></figure>")
        rows = "".join(f"<tr><td>{_e(f['label'])}</td><td>{f['value']:g} {_e(f['unit'])}</td>"
                       f"<td><a href='#ref{f['n']}'>[{f['n']}]</a></td><td class='q'>{_e(f['quote'][:200])}</td></tr>"
                       for f in facts[:40])
        parts.append(f"<table class='compare'><thead><tr><th>{_e(L['entity'])}</th><th>{_e(L['value'])}</th>"
                     f"<th>{_e(L['source'])}</th><th></th></tr></thead><tbody>{rows}</tbody></table>")
    else:
        parts.append(f"<p class='note'>{_e(L['no_numbers'])}</p>")
    parts.append("</section>")
    # research questions compared: what each found, from which sources
    qrows = []
    for f in findings:
        srcs = "".join(f"<a href='#ref{nums[u]}'>[{nums[u]}]</a>" for u in dict.fromkeys(f.seen) if u in nums)
        sec = next((s.title for s in sections if s.index == f.section), "")
        qrows.append(f"<tr><td>{_e(sec)}</td><td>{_e(f.question)}</td><td>{_e(f.answer or L['no_finding'])}</td>"
                     f"<td>{srcs}</td></tr>")
    parts.append(f"<section id='questions'><h2>{_e(L['questions'])}</h2><table class='compare'><thead><tr><th></th>"
                 f"<th>{_e(L['question'])}</th><th>{_e(L['finding'])}</th><th>{_e(L['sources'])}</th></tr></thead>"
                 f"<tbody>{''.join(qrows)}</tbody></table></section>")
    # source cards
    cards = []
    for r in refs:
        quotes = "".join(f"<blockquote>“{_e(q)}”</blockquote>" for q in r["quotes"])
        cards.append(f"<article class='card' id='ref{r['n']}'><h3>[{r['n']}] {_e(r['title'])}</h3>"
                     f"<p class='url'>{_e(r['url'])}</p>{quotes}<p class='where'>{_e(L['cited_in'])}: "
                     f"{_e(', '.join(r['sections']))}</p></article>")
    parts.append(f"<section id='references'><h2>{_e(L['references'])}</h2><div class='cards'>{''.join(cards)}"
                 "</div></section>")
    data = {"mindmap": mindmap_data(title, sections, findings, L), "charts": chart_list}
    return TEMPLATE.format(lang=_e(lang), title=_e(title), css=_CSS, jsmind_css=_vendor("jsmind.css"),
                           body="\n".join(parts), chartjs=_vendor("chart.umd.min.js"), jsmind=_vendor("jsmind.js"),
                           data=_script_json(data), app=_APP)


TEMPLATE = """<!DOCTYPE html>
<html lang="{lang}"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="sleuth report"><title>{title}</title>
<style>{jsmind_css}</style><style>{css}</style></head>
<body><main>
{body}
</main>
<script>{chartjs}</script>
<script>{jsmind}</script>
<script id="report-data" type="application/json">{data}</script>
<script>{app}</script>
</body></html>
"""

_CSS = """
body{font-family:Georgia,'DejaVu Serif',serif;margin:0;background:#f6f5f1;color:#1d1d1d;line-height:1.55}
main{max-width:980px;margin:0 auto;padding:24px 32px;background:#fff}
h1{font-size:2em;margin:.2em 0}h2{border-bottom:2px solid #ddd;padding-bottom:4px;margin-top:1.6em}
.request{font-style:italic;color:#555}.stats{font-size:.85em;color:#666}
.note{background:#fff8e1;border-left:4px solid #f0b400;padding:6px 10px;font-size:.9em}
.failed{background:#fdecea;border-left:4px solid #d93025;padding:6px 10px}
.cite{text-decoration:none;color:#1a5fb4;font-size:.8em;vertical-align:super}
.s.unverified{background:#fdecea}.flag{color:#d93025;font-weight:bold;font-size:.8em}
.s.extractive{color:#333}
#mindmap{width:100%;height:460px;border:1px solid #ddd;border-radius:6px;background:#fbfbfd;position:relative;overflow:hidden}

.chart{margin:16px 0}.chart-box{position:relative;height:300px}
figcaption{font-size:.85em;color:#555;margin-top:4px}
table.compare{border-collapse:collapse;width:100%;font-size:.9em;margin:12px 0}
table.compare th,table.compare td{border:1px solid #ddd;padding:4px 8px;vertical-align:top;text-align:left}
table.compare th{background:#f0f0f0}td.q{color:#555;font-size:.9em}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(280px,1fr));gap:12px}
.card{border:1px solid #ddd;border-radius:6px;padding:8px 12px;background:#fcfcfc;break-inside:avoid}
.card h3{font-size:1em;margin:.2em 0}.url{font-family:monospace;font-size:.8em;color:#1a5fb4;word-break:break-all}
blockquote{margin:6px 0;padding-left:8px;border-left:3px solid #aac;font-size:.9em;color:#333}
.where{font-size:.8em;color:#777}
@media print{body{background:#fff}main{padding:0;max-width:none}#mindmap{height:420px}.chart-box{height:260px}
h2{break-after:avoid}}
"""

_APP = """
(function(){
  var data = JSON.parse(document.getElementById('report-data').textContent);
  try {
    var box = document.getElementById('mindmap');
    var jm = new jsMind({container:'mindmap', editable:false, theme:'primary', view:{engine:'canvas', hmargin:20,
      vmargin:20, line_width:2, line_color:'#7a8ca8', zoom:{min:0.2, max:2, step:0.1}},
      layout:{hspace:18, vspace:8, pspace:12}});
    jm.show(data.mindmap);
    jm.expand_all();
    // the whole map in view: zoom out until the laid-out tree fits its box (again before printing)
    var fit = function(){
      var r = box.getBoundingClientRect(), size = jm.view.size;
      if (!size || !size.w) return;
      var z = Math.min(1, (r.width - 8) / size.w, (r.height - 8) / size.h);
      z = Math.max(0.2, z);
      // jsMind refuses a zoom-out that would make the map fit (its guard compares with the current zoom)
      jm.view.zoom_current = Math.min(jm.view.zoom_current, z);
      jm.view.set_zoom(z);
      var panel = jm.view.e_panel;
      panel.scrollLeft = (panel.scrollWidth - panel.clientWidth) / 2;
      panel.scrollTop = (panel.scrollHeight - panel.clientHeight) / 2;
    };
    fit();
    window.addEventListener('beforeprint', fit);
  } catch (e) { document.getElementById('mindmap').textContent = 'mind map unavailable: ' + e; }
  var palette = ['#1a5fb4','#26a269','#e66100','#9141ac','#c64600','#2ec27e','#613583','#a51d2d'];
  data.charts.forEach(function(ch, k){
    var el = document.getElementById('chart' + k); if (!el) return;
    var cfg = ch.kind === 'timeline' ? {
      type:'scatter', data:{datasets:[{label:ch.unit, data:ch.values.map(function(v,i){return {x:v, y:i+1};}),
        backgroundColor:palette, pointRadius:7}]},
      options:{animation:false, maintainAspectRatio:false, plugins:{legend:{display:false},
        tooltip:{callbacks:{label:function(c){return ch.labels[c.dataIndex] + ': ' + ch.values[c.dataIndex];}}}},
        scales:{y:{ticks:{callback:function(v){return ch.labels[v-1] || '';}, stepSize:1},
          min:0, max:ch.values.length+1}, x:{title:{display:true, text:'year'}, ticks:{callback:function(v){return String(v);}}}}}
    } : {
      type:'bar', data:{labels:ch.labels.map(function(l,i){return l + ' [' + ch.refs[i] + ']';}),
        datasets:[{label:ch.unit, data:ch.values, backgroundColor:palette}]},
      options:{animation:false, maintainAspectRatio:false, indexAxis:'y', plugins:{legend:{display:false}},
        scales:{x:{title:{display:true, text:ch.unit}}}}
    };
    new Chart(el, cfg);
  });
})();
"""
