"""Flame graphs: SVG geometry, tooltips, escaping, colours and ids; speedscope JSON; folded text in and out."""

import json
import re
import time
import xml.etree.ElementTree as ET

import pytest

from tracetap.flamegraph import NANOSECONDS, SAMPLES, parse_folded, speedscope, svg, to_folded

NS = "{http://www.w3.org/2000/svg}"
SMALL = {"a;b;c": 3, "a;b;d": 1, "a;e": 4}  # total 8


def frames(document: str) -> dict[str, dict]:
    """Frame name -> its tooltip, rect geometry and fill, read from the SVG as a browser would."""
    out = {}
    for g in ET.fromstring(document).iter(f"{NS}g"):
        if g.get("class") != "f":
            continue
        info = g.find(f"{NS}title").text
        rect = g.find(f"{NS}rect")
        name = info[: info.rindex(" (")]
        assert name not in out
        out[name] = {
            "info": info, "x": float(rect.get("x")), "y": float(rect.get("y")), "width": float(rect.get("width")),
            "fill": rect.get("fill"), "label": g.find(f"{NS}text").text or "",
        }
    return out


def rgb(fill: str) -> tuple[int, int, int]:
    r, g, b = map(int, re.fullmatch(r"rgb\((\d+),(\d+),(\d+)\)", fill).groups())
    return r, g, b


def test_one_rect_per_frame_with_widths_proportional_to_weights():
    drawn = frames(svg(SMALL, "small", width=1200))
    assert set(drawn) == {"all", "a", "b", "c", "d", "e"}
    span = 1200 - 2 * 10
    assert drawn["all"]["x"] == 10 and drawn["all"]["width"] == pytest.approx(span)
    assert drawn["a"]["width"] == pytest.approx(span)
    assert drawn["b"]["width"] == pytest.approx(span / 2, abs=0.01)
    assert drawn["e"]["width"] == pytest.approx(span / 2, abs=0.01)
    assert drawn["c"]["width"] == pytest.approx(3 * drawn["d"]["width"], abs=0.03)
    assert drawn["c"]["width"] == pytest.approx(span * 3 / 8, abs=0.01)


def test_children_lie_within_their_parent_one_row_above_sorted_by_name():
    drawn = frames(svg(SMALL, "small"))
    for parent, children in {"all": ["a"], "a": ["b", "e"], "b": ["c", "d"]}.items():
        p = drawn[parent]
        for child in children:
            c = drawn[child]
            assert c["y"] == p["y"] - 16  # the root is at the bottom
            assert c["x"] >= p["x"] - 0.01 and c["x"] + c["width"] <= p["x"] + p["width"] + 0.01
    assert drawn["b"]["x"] < drawn["e"]["x"] and drawn["c"]["x"] < drawn["d"]["x"]
    assert drawn["e"]["x"] == pytest.approx(drawn["b"]["x"] + drawn["b"]["width"], abs=0.01)


def test_a_frame_with_self_time_spans_its_children_and_empty_frames_merge():
    drawn = frames(svg({"a;b": 2, "a;b;c": 3, "a;;x": 1, "a;x": 1}, "t", width=1020))  # total 7, 1000 px
    assert drawn["b"]["width"] == pytest.approx(1000 * 5 / 7, abs=0.01)
    assert drawn["c"]["width"] == pytest.approx(1000 * 3 / 7, abs=0.01)
    assert drawn["b"]["x"] <= drawn["c"]["x"] and drawn["c"]["x"] + drawn["c"]["width"] <= drawn["b"]["x"] + drawn["b"]["width"] + 0.01
    assert drawn["x"]["info"] == "x (2 samples, 28.57%)" and drawn["x"]["y"] == drawn["b"]["y"]


def test_tooltips_give_name_weight_and_share():
    drawn = frames(svg(SMALL, "small"))
    assert drawn["c"]["info"] == "c (3 samples, 37.50%)"
    assert drawn["d"]["info"] == "d (1 sample, 12.50%)"
    assert drawn["all"]["info"] == "all (8 samples, 100.00%)"
    assert drawn["c"]["label"] == "c"


def test_nanoseconds_are_shown_as_durations():
    folded = {"app;sleep": 1_000_000_000, "app;poll": 350_000_000, "app;spin": 12_000, "app;io": 1_020_000_000}
    drawn = frames(svg(folded, "off-CPU", unit=NANOSECONDS))
    assert drawn["sleep"]["info"] == "sleep (1.00 s, 42.19%)"
    assert drawn["io"]["info"].startswith("io (1.02 s, ")
    assert drawn["poll"]["info"].startswith("poll (350 ms, ")
    assert "spin" not in drawn  # 12 µs of 2.37 s is below 0.1%
    assert frames(svg({"x": 12_000}, "t", unit=NANOSECONDS))["x"]["info"] == "x (12 µs, 100.00%)"
    assert frames(svg({"x": 1_500_000}, "t", unit=NANOSECONDS))["x"]["info"] == "x (1.5 ms, 100.00%)"
    assert frames(svg({"x": 800}, "t", unit=NANOSECONDS))["x"]["info"] == "x (800 ns, 100.00%)"


def test_labels_are_truncated_to_fit_their_rectangle():
    long = "handle_request_with_a_rather_long_name"
    drawn = frames(svg({f"app;{long}": 1, "app;other": 99}, "t", width=1000))
    assert drawn[long]["label"] == ""  # 9.8 px: no room for 3 characters
    drawn = frames(svg({f"app;{long}": 15, "app;other": 85}, "t", width=1000))
    fit = int((drawn[long]["width"] - 6) // 7)  # 147 px -> 20 characters
    assert drawn[long]["label"] == long[: fit - 2] + ".." and len(drawn[long]["label"]) == fit == 20
    assert drawn["other"]["label"] == "other"


def test_hostile_names_are_escaped_and_cleaned():
    hostile = '<script>&"]]>\x00\x1b[31m\ud800'
    document = svg({f"app;{hostile};leaf": 5, "app;ok": 5}, 'title </svg> & "]]>', subtitle="<b>\x07</b>")
    root = ET.fromstring(document)  # well-formed XML
    drawn = frames(document)
    cleaned = '<script>&"]]>\ufffd\ufffd[31m\ufffd'
    assert drawn[cleaned]["info"] == f"{cleaned} (5 samples, 50.00%)"
    assert [t.text for t in root.iter(f"{NS}text")][:2] == ['title </svg> & "]]>', "<b>\ufffd</b>"]
    assert len(list(root.iter(f"{NS}script"))) == 1 and document.count("]]>") == 1
    assert document.encode("utf-8")  # no lone surrogates left


def test_very_long_names_are_capped():
    name = "x" * 100_000
    document = svg({name: 1}, "t")
    (info,) = [t.text for t in ET.fromstring(document).iter(f"{NS}title") if t.text.startswith("x")]
    assert len(info) < 1100 and info.startswith("x" * 999 + "\u2026 (1 sample")


def test_narrow_frames_are_left_out_but_count_in_the_total():
    drawn = frames(svg({"app;big": 9_990, "app;tiny": 9, "app;small": 1}, "t", width=1200))
    assert "tiny" not in drawn and "small" not in drawn  # 0.09% and 0.01% of the width
    assert drawn["all"]["info"] == "all (10,000 samples, 100.00%)"
    assert drawn["big"]["info"] == "big (9,990 samples, 99.90%)"
    assert frames(svg({"app;big": 990, "app;edge": 10}, "t"))["edge"]["info"] == "edge (10 samples, 1.00%)"


def test_weights_below_one_are_ignored():
    drawn = frames(svg({"a;b": 2, "a;neg": -5, "a;zero": 0}, "t"))
    assert set(drawn) == {"all", "a", "b"} and drawn["all"]["info"] == "all (2 samples, 100.00%)"


def test_kernel_frames_are_orange_user_frames_red_and_colours_are_stable():
    folded = {"app;main;read;ksys_read_[k];vfs_read_[k]": 5, "app;main;compute": 5}
    first, second = frames(svg(folded, "one")), frames(svg({"other;main;vfs_read_[k]": 1}, "two"))
    for name in ("ksys_read_[k]", "vfs_read_[k]"):
        r, g, b = rgb(first[name]["fill"])
        assert b == 0 and 190 <= r <= 255 and 90 <= g <= 155
    for name in ("app", "main", "read", "compute"):
        r, g, b = rgb(first[name]["fill"])
        assert g == b and 200 <= r <= 255 and 50 <= g <= 130
    assert first["main"]["fill"] == second["main"]["fill"]
    assert first["vfs_read_[k]"]["fill"] == second["vfs_read_[k]"]["fill"]
    assert len({first[n]["fill"] for n in first}) > 3  # hashed, not one colour for all


def test_each_graph_has_its_own_id_prefix():
    def ids(document):
        return {e.get("id") for e in ET.fromstring(document).iter() if e.get("id")}

    one, two = svg(SMALL, "same"), svg(SMALL, "same")
    prefix_one, prefix_two = ET.fromstring(one).get("id"), ET.fromstring(two).get("id")
    assert prefix_one != prefix_two and not ids(one) & ids(two)
    assert all(i == prefix_one or i.startswith(prefix_one + "-") for i in ids(one))
    assert f'const id = "{prefix_one}"' in one and f"#{prefix_one} " in one  # script and css scoped


def test_interactivity_is_embedded():
    root = ET.fromstring(svg(SMALL, "t"))
    texts = {t.text for t in root.iter(f"{NS}text")}
    assert {"Search", "Reset Zoom"} <= texts
    (script,) = root.iter(f"{NS}script")
    assert "RegExp" in script.text and "keydown" in script.text and "click" in script.text
    assert root.find(f".//{NS}*[@href]") is None and "http" not in script.text  # nothing external


def test_empty_input_says_there_is_nothing_to_show():
    for folded in ({}, {"a": 0}, {"a;b": -1}):
        root = ET.fromstring(svg(folded, "empty", subtitle="window"))
        assert not [g for g in root.iter(f"{NS}g") if g.get("class") == "f"]
        assert "Nothing to show: no samples" in {t.text for t in root.iter(f"{NS}text")}
    document = speedscope({}, "empty")
    assert document["shared"]["frames"] == [] and document["profiles"][0]["samples"] == []
    assert document["profiles"][0]["weights"] == [] and document["profiles"][0]["endValue"] == 0


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError):
        svg(SMALL, "t", unit="seconds")
    with pytest.raises(ValueError):
        speedscope(SMALL, "t", unit="ms")
    with pytest.raises(ValueError):
        svg(SMALL, "t", width=50)


def test_speedscope_samples_frames_and_weights():
    folded = {"app;main;b": 3, "app;main;a_[k]": 2, "app;other": 5, "app;neg": -1}
    document = speedscope(folded, "on-CPU app")
    assert json.loads(json.dumps(document)) == document
    assert document["$schema"] == "https://www.speedscope.app/file-format-schema.json"
    assert document["name"] == "on-CPU app" and document["activeProfileIndex"] == 0 and document["exporter"] == "tracetap"
    names = [f["name"] for f in document["shared"]["frames"]]
    assert sorted(names) == ["a_[k]", "app", "b", "main", "other"]  # deduplicated
    (profile,) = document["profiles"]
    assert profile["type"] == "sampled" and profile["name"] == "on-CPU app" and profile["unit"] == "none"
    assert profile["startValue"] == 0 and profile["endValue"] == 10
    stacks = {";".join(names[i] for i in sample): w for sample, w in zip(profile["samples"], profile["weights"])}
    assert stacks == {"app;main;b": 3, "app;main;a_[k]": 2, "app;other": 5}
    assert speedscope(folded, "off", unit=NANOSECONDS)["profiles"][0]["unit"] == "nanoseconds"
    assert speedscope(folded, "on", unit=SAMPLES)["profiles"][0]["unit"] == "none"


def test_speedscope_cleans_hostile_names():
    document = speedscope({"app;\x00\ud800": 1}, "t")
    assert [f["name"] for f in document["shared"]["frames"]] == ["app", "\ufffd\ufffd"]
    assert json.dumps(document, ensure_ascii=False).encode("utf-8")


def test_folded_text_round_trips():
    folded = {"oms-app;main;time.sleep;schedule_[k]": 7, "oms-app;read [libc.so.6]": 2, "b": 1}
    text = to_folded(folded)
    assert text == "b 1\noms-app;main;time.sleep;schedule_[k] 7\noms-app;read [libc.so.6] 2\n"
    assert parse_folded(text) == folded
    assert to_folded({"a": 0, "b": -2}) == ""


def test_parse_folded_skips_bad_lines_and_adds_repeats():
    text = "a;b 3\r\nno count\na;b 2\n 4\nx;y -1\nx;y 1.5\nx;y ²\nx;y 0\nc;d  10  \n\n" + "z " + "9" * 30 + "\n"
    assert parse_folded(text) == {"a;b": 5, "c;d": 10}


def test_parse_folded_is_fast_on_garbage():
    for garbage in ("x" * 1_000_000, ("; " * 500_000), "a " + "9" * 1_000_000, "\ufffd \x00" * 300_000):
        started = time.perf_counter()
        assert parse_folded(garbage) == {}
        assert time.perf_counter() - started < 0.5
