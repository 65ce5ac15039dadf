"""The per-source report cannot be fooled by a model that reads the source (real rows, synthetic predictions).

Rows come from the real knee folders in ../shared/data (their MANIFEST.csv: relpath, label), with
the sha256 of each file's bytes as its duplicate group, so byte-identical Wani copies inside the
Kaggle folders are real groups here.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from osteo_edge.core.stats import wilson_interval
from osteo_edge.data.sources import WANI, group_source
from osteo_edge.train.per_source import per_source_report
from osteo_edge.train.source_markdown import format_report
from osteo_edge.train.source_probe import source_probe

LABELS = ["Normal", "Osteopenia", "Osteoporosis"]
FOLDERS = ("2class-kaggle", "multiclass-kaggle", WANI)
# Group sources by the Wani rule over byte-identical groups: every 2class-kaggle file also sits in
# multiclass-kaggle, so the Kaggle-only groups are "multiclass-kaggle" or the joined name.
KAGGLE_BOTH = "2class-kaggle+multiclass-kaggle"
SOURCES = (KAGGLE_BOTH, "multiclass-kaggle", WANI)
# files per (group source, class) in the small subset: 5 per Kaggle cell, 16 Wani (36 in all)
WANI_CELL = {"Normal": 4, "Osteopenia": 8, "Osteoporosis": 4}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def manifest(shared_data: Path) -> list[dict]:
    """Every knee file of the three folders: path, folder (source), label as found, manifest sha256."""
    rows = []
    for s in FOLDERS:
        with open(shared_data / "knee" / s / "MANIFEST.csv", newline="", encoding="utf-8") as fh:
            for r in csv.DictReader(fh):
                rows.append({"path": shared_data / "knee" / s / r["relpath"], "folder": s, "label": r["label"], "sha": r["sha256"]})
    return rows


@pytest.fixture(scope="module")
def subset(manifest: list[dict]) -> dict:
    """36 real files (the first few of every folder/class), grouped by the sha256 of their bytes,
    with each group's source taken over ALL files of the three folders by the Wani rule."""
    all_sources = group_source({"group": r["sha"], "source": r["folder"]} for r in manifest)
    by_cell = defaultdict(list)
    for r in sorted(manifest, key=lambda r: (r["folder"], r["label"], r["path"].name)):
        src = all_sources[r["sha"]]
        if src == r["folder"] or (src == KAGGLE_BOTH and r["folder"] == "2class-kaggle"):  # one file per group
            by_cell[(src, r["label"])].append(r)
    picked = []
    for (src, label), rows in sorted(by_cell.items()):
        picked += rows[: WANI_CELL[label] if src == WANI else 5]
    groups = [_sha(r["path"]) for r in picked]  # the real bytes, not the manifest's word
    return {
        "rows": picked,
        "y": np.array([LABELS.index(r["label"]) for r in picked]),
        "groups": np.array(groups),
        "sources": np.array([all_sources[g] for g in groups]),
    }


def _source_reader(y: np.ndarray, sources: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A model that reads only the source: each source's majority class; probabilities P(class | source)."""
    pred = np.empty(len(y), dtype=int)
    probs = np.empty((len(y), len(LABELS)))
    for s in np.unique(sources):
        m = sources == s
        counts = np.bincount(y[m], minlength=len(LABELS))
        pred[m] = int(np.argmax(counts))
        probs[m] = counts / counts.sum()
    return pred, probs


def test_subset_is_real_and_three_sourced(subset: dict) -> None:
    assert len(subset["rows"]) == 36
    assert all(r["path"].is_file() for r in subset["rows"])
    assert set(subset["sources"]) == set(SOURCES)
    wani = subset["y"][subset["sources"] == WANI]
    assert set(wani.tolist()) == {0, 1, 2}  # the only three-class source


def test_source_reader_is_no_better_than_the_shortcut(subset: dict) -> None:
    y, src = subset["y"], subset["sources"]
    pred, probs = _source_reader(y, src)
    r = per_source_report(y, pred, probs, src, LABELS, groups=subset["groups"], n_boot=200)
    assert {v.source for v in r.verdicts} == set(SOURCES)
    for v in r.verdicts:
        assert not v.beats_shortcut and not v.ci_clears_bar, v
        assert v.margin_points <= 1e-9
    # its pooled low-BMD AUROC is exactly what the source-only baseline gets: the source, nothing more
    assert r.pooled_low_bmd_auroc == pytest.approx(r.baselines.source_only_low_bmd_auroc)
    assert r.baselines.basis == "evaluated rows"
    assert r.baselines.source_only_accuracy == pytest.approx(r.pooled_accuracy)
    # inside a source it cannot rank at all
    for s in r.per_source:
        assert math.isnan(s.low_bmd_auroc) or s.low_bmd_auroc == pytest.approx(0.5)
    assert "**no**" in format_report(r)


def test_source_reader_fails_even_when_the_training_majority_differs(subset: dict, manifest: list[dict]) -> None:
    """Majorities counted on other (training) rows: a source reader tuned to the evaluated rows still fails."""
    y, src = subset["y"], subset["sources"]
    pred, probs = _source_reader(y, src)
    # training rows: Wani made mostly Normal, so the training majority there (Normal) is not the test one
    train_y = ["Normal"] * 10 + ["Osteopenia"] * 3 + ["Normal", "Osteoporosis"] * 5
    train_src = [WANI] * 13 + ["2class-kaggle", "multiclass-kaggle"] * 5
    r = per_source_report(y, pred, probs, src, LABELS, groups=subset["groups"], train_y=train_y, train_sources=train_src, n_boot=200)
    assert r.baselines.basis == "training rows"
    wani = next(c for c in r.baselines.per_source if c.source == WANI)
    assert wani.majority_label == "Normal" and wani.best_constant_label == "Osteopenia"
    assert wani.majority_accuracy < wani.best_constant_accuracy
    assert not any(v.beats_shortcut for v in r.verdicts)


def test_perfect_predictor_beats_the_shortcut_on_wani(subset: dict) -> None:
    y, src = subset["y"], subset["sources"]
    probs = np.full((len(y), 3), 0.05)
    probs[np.arange(len(y)), y] = 0.9
    r = per_source_report([LABELS[i] for i in y], [LABELS[i] for i in y], probs, src, LABELS, groups=subset["groups"], n_boot=200)
    v = r.verdict(WANI)
    assert v.beats_shortcut and v.margin_points > 0
    assert v.ci_clears_bar  # 16 of 16 Wani knees right vs a bar of 8 of 16: beyond the noise
    assert v.margin_points == pytest.approx(100 * (1 - v.shortcut_accuracy))
    assert r.pooled_accuracy == 1.0 and r.worst_source_accuracy == 1.0
    assert r.cells and all(c.k == c.n > 0 for c in r.cells)
    assert {(c.source, c.label) for c in r.cells} >= {(WANI, lab) for lab in LABELS}
    assert sum(c.n for c in r.cells) == len(y)
    assert r.wani_osteopenia_vs_osteoporosis_auroc == 1.0
    assert r.within_source_low_bmd_auroc[WANI] == 1.0
    # every source has a confusion matrix whose diagonal holds all its rows
    for s in r.per_source:
        conf = np.array(s.confusion)
        assert conf.sum() == s.n == np.trace(conf)
    json.loads(json.dumps(r.to_dict()))  # JSON-ready (nan -> null)


def test_one_wrong_wani_normal_shows_in_its_cell(subset: dict) -> None:
    y, src = subset["y"], subset["sources"]
    pred = y.copy()
    i = int(np.flatnonzero((src == WANI) & (y == 0))[0])
    pred[i] = 1  # a Wani Normal knee called Osteopenia
    r = per_source_report(y, pred, None, src, LABELS)
    c = r.cell(WANI, "Normal")
    assert (c.k, c.n) == (c.n - 1, int(np.sum((src == WANI) & (y == 0))))
    assert r.worst_source == WANI
    assert math.isnan(r.pooled_low_bmd_auroc)  # no probabilities, no AUROC


def test_wani_rule_assigns_a_group_with_a_wani_member_to_wani(manifest: list[dict]) -> None:
    # real byte-identical groups with a Wani member and more Kaggle members than Wani ones
    by_sha = defaultdict(list)
    for r in manifest:
        by_sha[r["sha"]].append(r)
    mixed = [m for m in by_sha.values() if sum(r["folder"] == WANI for r in m) == 1 and len(m) >= 3]
    assert mixed, "the data should hold Wani images copied into the Kaggle folders"
    members = mixed[0]
    assert len({_sha(r["path"]) for r in members}) == 1  # really the same bytes
    rows = [{"group": 7, "source": r["folder"]} for r in members]
    rows += [{"group": 8, "source": "multiclass-kaggle"}, {"group": 8, "source": "2class-kaggle"}, {"group": 8, "source": "2class-kaggle"}]
    out = group_source(rows)
    assert out[7] == WANI  # a minority member from Wani decides
    assert out[8] == KAGGLE_BOTH  # otherwise the members' source(s)
    assert group_source(rows, mixed="majority") == {7: WANI, 8: "2class-kaggle"}
    # objects with attributes work as well (SplitRow, FileInfo)
    from osteo_edge.data.split import SplitRow

    srows = [SplitRow(path="a", label="Normal", orig_label="Normal", source=s, group=3, split="train", fold=0, sha256="") for s in ("2class-kaggle", WANI)]
    assert group_source(srows) == {3: WANI}


def test_interval_bounds_contain_the_point_estimate(subset: dict) -> None:
    y, src = subset["y"], subset["sources"]
    rng = np.random.default_rng(0)
    pred = np.where(rng.random(len(y)) < 0.7, y, (y + 1) % 3)
    for groups in (None, subset["groups"]):
        r = per_source_report(y, pred, None, src, LABELS, groups=groups, n_boot=300)
        assert any(0 < c.k < c.n for c in r.cells)
        for c in r.cells:
            assert c.ci95.lo <= c.recall <= c.ci95.hi, c
            assert 0.0 <= c.ci95.lo and c.ci95.hi <= 1.0
            assert c.ci95.hi - c.ci95.lo > 0  # never a zero-width interval from a handful of knees
        for s in r.per_source:
            assert s.accuracy_ci95.contains(s.accuracy)
        methods = {c.ci95.method for c in r.cells}
        assert methods == {"wilson"} if groups is None else methods <= {"bootstrap-groups", "wilson-groups"}
    lo, hi = wilson_interval(8, 10)  # textbook value
    assert (round(lo, 3), round(hi, 3)) == (0.49, 0.943)


def test_source_probe_reads_the_source_only_when_it_is_there(manifest: list[dict]) -> None:
    by_group = group_source({"group": r["sha"], "source": r["folder"]} for r in manifest)
    sources = np.array([by_group[r["sha"]] for r in manifest])
    groups = np.array([r["sha"] for r in manifest])
    rng = np.random.default_rng(0)
    onehot = (sources[:, None] == np.array(SOURCES)[None, :]).astype(float)
    encoded = np.column_stack([onehot + rng.normal(0, 0.3, onehot.shape), rng.normal(size=(len(sources), 4))])
    hi = source_probe(encoded, sources, groups, folds=5, seed=0)
    assert hi.auroc > 0.95 and len(hi.auroc_per_fold) == 5
    assert hi.sources == tuple(sorted(SOURCES))
    lo = source_probe(rng.normal(size=(len(sources), 8)), sources, groups, folds=5, seed=0)
    assert abs(lo.auroc - 0.5) < 0.07, lo
    assert hi.auroc - lo.auroc > 0.3
    assert "lower is better" in format_report(lo)


def test_source_probe_keeps_copies_of_a_radiograph_in_one_fold(manifest: list[dict]) -> None:
    """Features that only identify the radiograph (one random vector per duplicate group) say nothing
    about the source of an unseen radiograph: a probe that let copies straddle folds would read them."""
    by_group = group_source({"group": r["sha"], "source": r["folder"]} for r in manifest)
    copies = defaultdict(list)
    for r in manifest:
        copies[r["sha"]].append(r)
    multi = sorted((m for m in copies.values() if len(m) >= 2), key=lambda m: m[0]["sha"])[:120]
    rows = [r for m in multi for r in m]
    groups = np.array([r["sha"] for r in rows])
    sources = np.array([by_group[g] for g in groups])
    rng = np.random.default_rng(0)
    uniq, inv = np.unique(groups, return_inverse=True)
    feats = rng.normal(size=(len(uniq), 96))[inv] + rng.normal(0, 0.05, size=(len(rows), 96))
    res = source_probe(feats, sources, groups, folds=5, seed=0)
    assert abs(res.auroc - 0.5) < 0.1, res
