"""The figures' data: the beam tree's layout and marks, the compact attention heatmap, word probabilities."""

from __future__ import annotations

import itertools
import json
import random

import numpy as np
import pytest

from nmt.search.tree import BeamTree, Node
from nmt.serving import plots
from nmt.serving.translator import Translation

WORDS = ["the", "a", "dog", "cat", "man", "woman", "is", "are", "running", "sitting", "on", "in", "front", "of",
         "with", "street", "green", "red", "shirt", "small", "large", "playing", "ball", "water", "beach", "child",
         "children", "people", "group", "two", "three", "young", "old", "wearing", "black", "white", "standing",
         "near", "building", "next", "to", "looking", "at", "camera", "blue", "jacket", "holding", "sign", ",", ".",
         "and", "while"]


def small_tree() -> BeamTree:
    """Beam 2, three steps: a pruned candidate, a hypothesis that finishes early, the best path 0-2-5."""
    nodes = [
        Node(0, None, 0, "a", -0.2, -0.2, -0.2, "kept"),
        Node(1, None, 0, "the", -0.9, -0.9, -0.9, "kept"),
        Node(2, 0, 1, "dog", -0.3, -0.5, -0.25, "kept"),
        Node(3, 1, 1, "</s>", -0.4, -1.3, -0.65, "finished"),
        Node(4, 1, 1, "cat", -0.5, -1.4, -0.7, "kept"),
        Node(5, 2, 2, "</s>", -0.1, -0.6, -0.2, "finished"),
        Node(6, 0, 1, "hound", -2.5, -2.7, -1.35, "pruned"),
        Node(7, 4, 2, "sits", -1.0, -2.4, -0.8, "pruned"),
    ]
    return BeamTree("ein Hund", ["ein", "Hund"], nodes, [0, 2, 5], beam_size=2, length_penalty=1.0,
                    translation="a dog")


def random_tree(beam: int = 10, steps: int = 35, seed: int = 0, forced: int = 0) -> BeamTree:
    """A beam search's record in the core's shape: per step the 2K best candidates of the K live
    hypotheses; </s> among the K best finishes, the K best others go on, the rest are pruned."""
    rng = random.Random(seed)
    nodes: list[Node] = []
    live: list[Node | None] = [None]
    for step in range(steps):
        candidates = []
        for parent in live:
            base = parent.score if parent else 0.0
            words = rng.sample(WORDS, 3 if parent else min(len(WORDS), 2 * beam))
            for word in words + (["</s>"] if step > steps // 2 and rng.random() < 0.3 else []):
                logp = -rng.expovariate(1.5) if step >= forced else 0.0
                candidates.append((base + logp, logp, word, parent))
        candidates = sorted(candidates, key=lambda c: -c[0])[:2 * beam]
        live, taken = [], 0
        for rank, (score, logp, word, parent) in enumerate(candidates):
            finished = word == "</s>" and rank < beam
            keep = not finished and word != "</s>" and taken < beam
            status = "finished" if finished else "kept" if keep else "pruned"
            node = Node(len(nodes), parent.id if parent else None, step, word, logp, score, score / (step + 1), status)
            nodes.append(node)
            if keep:
                live.append(node)
                taken += 1
    best = next(n for n in nodes if n.step == steps - 1 and n.status == "kept")
    by_id, path = {n.id: n for n in nodes}, []
    while best is not None:
        path.insert(0, best.id)
        best = by_id.get(best.parent)
    return BeamTree("x", ["x"], nodes, path, beam_size=beam, length_penalty=1.0, forced=forced)


def node_points(figure: dict) -> dict[int, tuple[dict, int]]:
    """Node id -> (its trace, index in it), over the node traces (those with customdata)."""
    points = {}
    for trace in figure["data"]:
        for i, row in enumerate(trace.get("customdata") or []):
            assert row[0] not in points, f"node {row[0]} drawn twice"
            points[row[0]] = (trace, i)
    return points


def as_json(fig) -> dict:
    return json.loads(fig.to_json())


def coordinates(points: dict) -> dict[int, tuple[float, float]]:
    return {i: (t["x"][k], t["y"][k]) for i, (t, k) in points.items()}


def edge_segments(trace: dict) -> list[tuple[tuple, tuple]]:
    xs, ys = trace["x"], trace["y"]
    assert len(xs) % 3 == 0 and xs[2::3] == [None] * (len(xs) // 3) and ys[2::3] == [None] * (len(ys) // 3)
    return [((xs[i], ys[i]), (xs[i + 1], ys[i + 1])) for i in range(0, len(xs), 3)]


def test_beam_tree_draws_every_node_once_with_its_id_and_hover():
    tree = small_tree()
    figure = as_json(plots.beam_tree_figure(tree))
    points = node_points(figure)
    assert sorted(points) == [n.id for n in tree.nodes]
    for node in tree.nodes:
        trace, k = points[node.id]
        x, y = trace["x"][k], trace["y"][k]
        assert x == node.step and isinstance(y, (int, float))  # numeric positions, never words
        assert trace["customdata"][k][:7] == [node.id, node.token.replace("<", "&lt;").replace(">", "&gt;"),
                                              node.step + 1, node.logp, node.score, node.normalized, node.status]
        assert node.token.replace("<", "&lt;").replace(">", "&gt;") in trace["text"][k]
    hover = points[0][0]["hovertemplate"]
    assert all(f"customdata[{i}]" in hover for i in range(1, 8)) and "normalised" in hover


def test_beam_tree_edges_join_each_node_to_its_parent():
    tree = small_tree()
    figure = as_json(plots.beam_tree_figure(tree))
    at = coordinates(node_points(figure))
    lines = [t for t in figure["data"] if t["mode"] == "lines"]
    assert len(lines) == 3  # faint (to pruned), others, best path: not one trace per edge
    segments = [s for t in lines for s in edge_segments(t)]
    expected = {((at[n.parent][1]), at[n.id]) for n in tree.nodes if n.parent is not None}
    got = set()
    for (x0, y0), end in segments:
        parent = next(i for i, (px, py) in at.items() if py == y0 and px <= x0 < px + 1)
        assert at[parent][0] == end[0] - 1  # from just after the parent's label to the child's marker
        got.add((y0, end))
    assert got == expected and len(segments) == len(expected)
    best = next(t for t in lines if t["name"] == "best path")
    assert [end for _, end in edge_segments(best)] == [at[2], at[5]] and best["line"]["width"] >= 3


def test_beam_tree_marks_best_path_pruned_and_finished():
    tree = small_tree()
    figure = as_json(plots.beam_tree_figure(tree))
    points = node_points(figure)

    def marker(node_id: int, key: str):
        trace, k = points[node_id]
        value = trace["marker"]
        for part in key.split("."):
            value = value[part]
        return value[k] if isinstance(value, list) else value

    for node_id in tree.best_path:
        assert marker(node_id, "line.width") >= 3 and marker(node_id, "line.color") == plots.BEST_COLOR
        assert points[node_id][0]["text"][points[node_id][1]].startswith("<b>")
    assert marker(4, "line.width") < 3 and not points[4][0]["text"][points[4][1]].startswith("<b>")
    assert marker(6, "opacity") < 0.5 and marker(6, "size") < marker(4, "size")  # pruned: faded, small
    assert points[6][0]["textfont"]["color"][points[6][1]] == plots.PRUNED_TEXT
    assert marker(4, "opacity") == 1.0
    assert marker(3, "symbol") != marker(4, "symbol") == "circle"  # finished: its own symbol
    assert marker(5, "symbol") == marker(3, "symbol")
    assert all(t["marker"]["coloraxis"] == "coloraxis" for t, _ in points.values())
    assert marker(0, "color") == -0.2 and "colorbar" in figure["layout"]["coloraxis"]  # colour = score
    assert figure["layout"]["xaxis"]["ticktext"][0].startswith("1<br>")
    assert "&lt;/s&gt;" in figure["layout"]["xaxis"]["ticktext"][2]  # the best path's words, escaped


def test_beam_tree_layout_of_a_large_search():
    tree = random_tree(beam=10, steps=35)
    assert len(tree.nodes) == 35 * 20 and len(tree.best_path) == 35
    figure = as_json(plots.beam_tree_figure(tree))
    at = coordinates(node_points(figure))
    assert len(at) == len(tree.nodes)
    by_step: dict[int, list[float]] = {}
    for x, y in at.values():
        by_step.setdefault(x, []).append(y)
    for ys in by_step.values():
        ys.sort()
        assert all(b - a >= 0.999 for a, b in itertools.pairwise(ys))  # a row apart: nothing overlaps
    by_id = {n.id: n for n in tree.nodes}
    # no crossing edges: within a step, children keep their parents' order
    for step, ys in by_step.items():
        children = sorted((n for n in tree.nodes if n.step == step and n.parent is not None), key=lambda n: at[n.id][1])
        parents = [at[n.parent][1] for n in children]
        assert parents == sorted(parents)
    # children sit near their parents (here 20 candidates from 10 parents)
    gaps = [abs(at[n.id][1] - at[n.parent][1]) for n in tree.nodes if n.parent is not None]
    assert np.median(gaps) <= 3 and all(by_id[n].status != "pruned" for n in tree.best_path)
    layout = figure["layout"]
    assert plots.TREE_MIN_HEIGHT <= layout["height"] <= plots.TREE_MAX_HEIGHT
    assert layout["width"] >= 35 * plots.TREE_STEP_PX and layout["xaxis"]["tickvals"] == list(range(35))
    assert layout["dragmode"] is False  # a drag or swipe scrolls the container instead of zooming
    assert [t.split("<br>")[0] for t in layout["xaxis"]["ticktext"]] == [str(i) for i in range(1, 36)]


def test_beam_tree_height_grows_with_the_beam_and_is_clamped():
    heights = [plots.beam_tree_figure(random_tree(beam=b, steps=12)).layout.height for b in (1, 3, 10, 40)]
    assert heights[0] == plots.TREE_MIN_HEIGHT and heights[1] <= heights[2] and heights[2] > heights[1]
    assert heights[3] == plots.TREE_MAX_HEIGHT
    assert plots.beam_tree_figure(small_tree(), height=500).layout.height == 500
    widths = [plots.beam_tree_figure(random_tree(beam=3, steps=s)).layout.width for s in (2, 20, 200)]
    assert widths == [plots.TREE_MIN_WIDTH, widths[1], plots.TREE_MAX_WIDTH] and widths[1] > plots.TREE_MIN_WIDTH


def test_beam_tree_marks_a_forced_prefix_and_refuses_an_empty_tree():
    tree = random_tree(beam=3, steps=6, forced=2)
    figure = as_json(plots.beam_tree_figure(tree))
    [band] = figure["layout"]["shapes"]
    assert band["x0"] < 0 and 1 < band["x1"] < 2  # steps 1 and 2 (x = 0, 1) shaded
    notes = {row[0]: row[7] for t, k in node_points(figure).values() for row in [t["customdata"][k]]}
    assert all(("forced" in notes[n.id]) == (n.step < 2) for n in tree.nodes)
    assert "shapes" not in as_json(plots.beam_tree_figure(small_tree()))["layout"]
    with pytest.raises(ValueError, match="no nodes"):
        plots.beam_tree_figure(BeamTree("", [], [], []))


def test_spread_keeps_order_and_rows_apart():
    assert plots._spread([0.0, 0.0, 0.0]) == [-1.0, 0.0, 1.0]
    assert plots._spread([0.0, 5.0]) == [0.0, 5.0]
    assert plots._spread([3.0, 1.0]) == [1.5, 2.5]


def translation(src: list[str], out: list[str]) -> Translation:
    rng = np.random.default_rng(0)
    attention = rng.random((len(out), len(src)))
    return Translation(" ".join(src), src, " ".join(out), out, -0.5, [], attention / attention.sum(1, keepdims=True))


def test_compact_heatmap_keeps_every_word_and_shortens_long_ones_in_ticks_only():
    src = ["der", "Straßenbahnhaltestelle", "und", "der", "Hund", "."]
    out = ["the", "tram", "stop", "and", "the", "extraordinarily", "dog", "."]
    figure = as_json(plots.attention_figure(translation(src, out), compact=True))
    heatmap, layout = figure["data"][0], figure["layout"]
    xaxis, yaxis = layout["xaxis"], layout["yaxis"]
    assert xaxis["tickvals"] == list(range(6)) and heatmap["x"] == list(range(6))  # one tick per word
    assert xaxis["ticktext"] == ["der", "Straßen…", "und", "der", "Hund", "."]  # repeated "der" kept apart
    assert yaxis["ticktext"][5] == "extraor…" and yaxis["ticktext"][0] == yaxis["ticktext"][4] == "the"
    assert heatmap["customdata"][5][1] == ["Straßenbahnhaltestelle", "extraordinarily", ""]  # whole in hover
    assert xaxis["tickangle"] == -90 and xaxis["tickfont"]["size"] < 12 and yaxis["autorange"] == "reversed"
    assert heatmap["colorbar"]["orientation"] == "h" and max(layout["margin"].values()) <= 10
    assert plots.COMPACT_MIN_HEIGHT <= layout["height"] <= plots.COMPACT_MAX_HEIGHT
    assert "width" not in layout  # a short sentence fills its column


def test_compact_heatmap_keeps_a_minimum_cell_size_and_the_default_is_unchanged():
    src, out = [f"w{i}" for i in range(30)], [f"o{i}" for i in range(30)]
    layout = as_json(plots.attention_figure(translation(src, out), compact=True))["layout"]
    assert layout["width"] >= 30 * plots.COMPACT_CELL_PX
    assert layout["height"] >= 30 * plots.COMPACT_ROW_PX and layout["height"] <= plots.COMPACT_MAX_HEIGHT
    default = as_json(plots.attention_figure(translation(src[:6], out[:6])))["layout"]
    assert default["xaxis"]["tickangle"] == -45 and default["xaxis"]["title"]["text"] == "source"
    assert "width" not in default and default["height"] == plots.attention_height(6, 6)
