"""Flame graphs of folded stacks: an interactive SVG (drawn as Brendan Gregg's flamegraph.pl draws it) and the
speedscope file format.

A folded profile maps a stack (frames root first, joined by ";") to a weight: samples (on-CPU) or nanoseconds
(off-CPU). Frame names come from captured processes, so they are cleaned (characters XML cannot carry become U+FFFD,
names are cut at 1000 characters) and escaped; the SVG carries a small script (zoom on click, regex search) and prefixes its ids so that several graphs
can be inlined in one HTML page.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from xml.sax.saxutils import escape

SAMPLES, NANOSECONDS = "samples", "nanoseconds"
SPEEDSCOPE_SCHEMA = "https://www.speedscope.app/file-format-schema.json"

_PAD, _TOP, _BOTTOM, _ROW, _CHAR = 10, 50, 34, 16, 7  # px; _CHAR: width of one character at font-size 12
_MIN_SHARE, _MIN_PX = 0.001, 1.0
_MAX_NAME = 1000
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff\ufdd0-\ufdef\ufffe\uffff]")
_COUNTER = itertools.count(1)


def svg(folded: dict[str, int], title: str, unit: str = SAMPLES, width: int = 1200, subtitle: str = "") -> str:
    """An interactive SVG flame graph, root ("all") at the bottom; frames narrower than 0.1% of the width or 1 px
    are left out (their weight still counts in the total). User frames are red, kernel frames (`_[k]`) orange."""
    _check_unit(unit)
    if width < 100:
        raise ValueError(f"width must be at least 100 px, got {width}")
    span = width - 2 * _PAD
    total, kept = _layout(folded, span, max(_MIN_PX, _MIN_SHARE * span))
    prefix = "fg{}-{}".format(next(_COUNTER), _digest(repr((title, subtitle, unit, width, total, len(folded)))))
    levels = 1 + kept[-1][1] if kept else 0
    height = _TOP + max(levels, 2) * _ROW + _BOTTOM
    out = [
        f'<svg version="1.1" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'xmlns="http://www.w3.org/2000/svg" id="{prefix}" class="tracetap-flamegraph">',
        f"<style>#{prefix} text {{ font-family: Verdana, sans-serif; font-size: 12px; fill: #000 }} "
        f"#{prefix} .f {{ cursor: pointer }} #{prefix} .f:hover rect {{ stroke: #000; stroke-width: 0.5 }} "
        f"#{prefix} .f text {{ pointer-events: none }} #{prefix} .ui {{ cursor: pointer }}</style>",
        f'<defs><linearGradient id="{prefix}-bg" x1="0" y1="0" x2="0" y2="1">'
        '<stop stop-color="#eeeeee" offset="5%"/><stop stop-color="#eeeeb0" offset="95%"/></linearGradient></defs>',
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="url(#{prefix}-bg)"/>',
        f'<text x="{width / 2:g}" y="24" text-anchor="middle" style="font-size: 17px">{escape(_clean(title))}</text>',
    ]
    if subtitle:
        out.append(f'<text x="{width / 2:g}" y="42" text-anchor="middle" style="fill: #555">{escape(_clean(subtitle))}</text>')
    if not kept:
        out.append(f'<text x="{width / 2:g}" y="{_TOP + _ROW}" text-anchor="middle">Nothing to show: no samples</text>')
        return "\n".join(out + ["</svg>"])
    out += [
        f'<text id="{prefix}-reset" class="ui" x="{_PAD}" y="24" style="display: none">Reset Zoom</text>',
        f'<text id="{prefix}-search" class="ui" x="{width - _PAD}" y="24" text-anchor="end">Search</text>',
        f'<text id="{prefix}-details" x="{_PAD}" y="{height - 10}"> </text>',
        f'<text id="{prefix}-matched" x="{width - _PAD}" y="{height - 10}" text-anchor="end"> </text>',
        f'<g id="{prefix}-frames">',
    ]
    for name, depth, offset, weight in kept:
        name = _clean(name)
        x, w, y = _PAD + span * offset / total, span * weight / total, height - _BOTTOM - (depth + 1) * _ROW
        info = f"{name} ({_amount(weight, unit)}, {100 * weight / total:.2f}%)"
        out.append(
            f'<g class="f"><title>{escape(info)}</title><rect x="{_n(x)}" y="{y}" width="{_n(w)}" height="{_ROW - 1}" '
            f'fill="{_colour(name)}" rx="2" ry="2"/><text x="{_n(x + 3)}" y="{y + 11}">{escape(_label(name, w))}</text></g>'
        )
    out += ["</g>", "<script><![CDATA[", _SCRIPT.replace("@ID@", json.dumps(prefix)), "]]></script>", "</svg>"]
    return "\n".join(out)


def speedscope(folded: dict[str, int], name: str, unit: str = SAMPLES) -> dict:
    """A speedscope "sampled" profile: one sample (frame indexes, root first) per stack, frames deduplicated by name."""
    _check_unit(unit)
    frames: list[dict] = []
    index: dict[str, int] = {}  # cleaned name -> its index
    known: dict[str, int] = {}  # frame as given -> its index
    samples, weights = [], []
    for stack, weight in sorted(folded.items()):
        if weight <= 0:
            continue
        sample = []
        for frame in _frames(stack):
            i = known.get(frame)
            if i is None:
                cleaned = _clean(frame)
                i = known[frame] = index.setdefault(cleaned, len(frames))
                if i == len(frames):
                    frames.append({"name": cleaned})
            sample.append(i)
        samples.append(sample)
        weights.append(weight)
    profile = {
        "type": "sampled", "name": name, "unit": "none" if unit == SAMPLES else "nanoseconds",
        "startValue": 0, "endValue": sum(weights), "samples": samples, "weights": weights,
    }
    return {
        "$schema": SPEEDSCOPE_SCHEMA, "shared": {"frames": frames}, "profiles": [profile],
        "name": name, "activeProfileIndex": 0, "exporter": "tracetap",
    }


def parse_folded(text: str) -> dict[str, int]:
    """flamegraph.pl's folded text: "stack count" per line, the count after the last space. Lines that do not parse
    (and counts of 0) are skipped; repeated stacks add up."""
    folded: dict[str, int] = {}
    for line in text.split("\n"):
        stack, _, count = line.strip().rpartition(" ")
        stack = stack.rstrip()
        if stack and count.isascii() and count.isdigit() and len(count) < 20 and int(count) > 0:
            folded[stack] = folded.get(stack, 0) + int(count)
    return folded


def to_folded(folded: dict[str, int]) -> str:
    """One "stack count" line per stack of positive weight, sorted by stack (line breaks in a stack become spaces)."""
    return "".join(
        f"{stack.replace(chr(13), ' ').replace(chr(10), ' ')} {weight}\n"
        for stack, weight in sorted(folded.items()) if weight > 0
    )


def _layout(folded: dict[str, int], span: float, min_px: float) -> tuple[int, list[tuple[str, int, int, int]]]:
    """The total and (name, depth, offset, weight) of every frame at least `min_px` wide, by depth then offset.

    As flamegraph.pl: stacks sorted frame by frame, so those sharing a prefix are adjacent and a frame spans from
    the first stack that opens it to the first that leaves it."""
    stacks = sorted((_frames(stack), weight) for stack, weight in folded.items() if weight > 0)
    total = sum(weight for _, weight in stacks)
    if not total:
        return 0, []
    kept, opened, offset = [("all", 0, 0, total)], [], 0  # opened: (name, offset) per depth below the root

    def close(depth: int) -> None:
        for level in range(len(opened) - 1, depth - 1, -1):
            name, start = opened.pop()
            if span * (offset - start) / total >= min_px:
                kept.append((name, level + 1, start, offset - start))

    for frames, weight in stacks:
        same = 0
        while same < len(opened) and same < len(frames) and opened[same][0] == frames[same]:
            same += 1
        close(same)
        opened += [(frame, offset) for frame in frames[same:]]
        offset += weight
    close(0)
    kept.sort(key=lambda frame: frame[1:3])
    return total, kept


def _frames(stack: str) -> list[str]:
    return [frame for frame in stack.split(";") if frame]


def _check_unit(unit: str) -> None:
    if unit not in (SAMPLES, NANOSECONDS):
        raise ValueError(f"unit must be {SAMPLES!r} or {NANOSECONDS!r}, got {unit!r}")


def _clean(name: str) -> str:
    name = _UNSAFE.sub("\ufffd", name)
    return name if len(name) <= _MAX_NAME else name[: _MAX_NAME - 1] + "\u2026"


def _n(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".")


def _digest(value: str) -> str:
    return hashlib.sha1(value.encode("utf-8", "surrogatepass")).hexdigest()[:8]


def _label(name: str, width: float) -> str:
    fit = int((width - 6) // _CHAR)
    return "" if fit < 3 else name if len(name) <= fit else name[: fit - 2] + ".."


def _amount(weight: int, unit: str) -> str:
    if unit == SAMPLES:
        return f"{weight:,} sample{'' if weight == 1 else 's'}"
    return _duration(weight)


def _duration(ns: int) -> str:
    """Nanoseconds for people: '1.02 s', '350 ms', '12 µs', '800 ns'."""
    for scale, suffix in ((1e9, "s"), (1e6, "ms"), (1e3, "µs")):
        if ns >= scale:
            value = ns / scale
            return f"{value:.2f} s" if suffix == "s" else f"{value:.3g} {suffix}" if value < 999.5 else f"{value:.0f} {suffix}"
    return f"{ns} ns"


def _colour(name: str) -> str:
    """flamegraph.pl's 'mixed' palette, hashed from the name: kernel frames orange, the others red."""
    digest = hashlib.md5(name.encode("utf-8", "surrogatepass")).digest()
    v1, v2 = digest[0] / 255, digest[1] / 255
    if name.endswith("_[k]"):
        return f"rgb({190 + int(65 * v1)},{90 + int(65 * v2)},0)"
    grey = 50 + int(80 * v2)
    return f"rgb({200 + int(55 * v1)},{grey},{grey})"


_SCRIPT = """(function () {
  const id = @ID@, svg = document.getElementById(id), $ = (s) => document.getElementById(id + "-" + s);
  const details = $("details"), matched = $("matched"), reset = $("reset"), search = $("search");
  const frames = Array.from($("frames").children, (g) => {
    const r = g.querySelector("rect"), info = g.querySelector("title").textContent;
    return {g, r, l: g.querySelector("text"), x: +r.getAttribute("x"), w: +r.getAttribute("width"),
            y: +r.getAttribute("y"), fill: r.getAttribute("fill"), info, name: info.slice(0, info.lastIndexOf(" ("))};
  });
  const byG = new Map(frames.map((f) => [f.g, f])), root = frames[0], left = root.x, full = root.w, eps = 0.05;
  let term = null;
  function place(f, x, w) {
    const fit = Math.floor((w - 6) / 7);
    f.r.setAttribute("x", x); f.r.setAttribute("width", w); f.l.setAttribute("x", x + 3);
    f.l.textContent = fit < 3 ? "" : f.name.length <= fit ? f.name : f.name.slice(0, fit - 2) + "..";
  }
  function zoom(z) {
    const scale = full / z.w;
    for (const f of frames) {
      const inside = f.x >= z.x - eps && f.x + f.w <= z.x + z.w + eps;
      const around = f.x <= z.x + eps && f.x + f.w >= z.x + z.w - eps;
      f.g.style.display = (f.y <= z.y && inside) || (f.y > z.y && around) ? "" : "none";
      f.g.style.opacity = f.y > z.y ? "0.5" : "";
      if (f.y <= z.y && inside) place(f, left + (f.x - z.x) * scale, f.w * scale);
      else if (f.y > z.y && around) place(f, left, full);
    }
    reset.style.display = z === root ? "none" : "";
  }
  function find(re) {
    term = re;
    const spans = [];
    for (const f of frames) {
      const hit = re !== null && re.test(f.name);
      f.r.setAttribute("fill", hit ? "rgb(230,0,230)" : f.fill);
      if (hit) spans.push([f.x, f.x + f.w]);
    }
    spans.sort((a, b) => a[0] - b[0]);
    let sum = 0, end = -Infinity;
    for (const [a, b] of spans) if (b > end) { sum += b - Math.max(a, end); end = b; }
    matched.textContent = re ? "Matched: " + (100 * sum / full).toFixed(1) + "%" : " ";
    search.textContent = re ? "Reset Search" : "Search";
  }
  function ask() {
    const text = prompt("Search (regular expression)", term ? term.source : "");
    if (text === null) return;
    try { find(text ? new RegExp(text) : null); } catch (e) { matched.textContent = "Invalid regular expression"; }
  }
  const frameOf = (e) => byG.get(e.target.closest("g.f"));
  $("frames").addEventListener("click", (e) => { const f = frameOf(e); if (f) zoom(f); });
  $("frames").addEventListener("mouseover", (e) => { const f = frameOf(e); if (f) details.textContent = "Function: " + f.info; });
  $("frames").addEventListener("mouseout", () => { details.textContent = " "; });
  reset.addEventListener("click", () => zoom(root));
  search.addEventListener("click", () => (term ? find(null) : ask()));
  window.addEventListener("keydown", (e) => {
    const key = ((e.ctrlKey || e.metaKey) && (e.key || "").toLowerCase() === "f") || e.key === "F3";
    const mine = svg.matches(":hover") || document.querySelectorAll("svg.tracetap-flamegraph").length === 1;
    if (key && mine) { e.preventDefault(); ask(); }
  });
})();"""
