"""Data audit and leakage-safe splits, on a small real subset and on the full knee data."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from PIL import Image

from osteo_edge.data.audit import audit_sources, read_groups_csv
from osteo_edge.data.report import write_audit
from osteo_edge.data.sources import scan_sources
from osteo_edge.data.split import SplitOptions, make_split, read_split, split_sources, write_split
from osteo_edge.errors import ConfigError, DataError

REPO = Path(__file__).resolve().parents[1]


def test_mini_audit_known_structure(mini_sources, tmp_path):
    res = audit_sources(mini_sources)
    s = res.summary
    assert s["files"] == 11 and s["unreadable"] == 0
    # normal_0001 + byte copy + 128x256 re-encode + 2class copy are one radiograph; N1 == OP13.
    assert s["distinct_groups"] == 7
    assert s["conflicting_groups"] == 1
    assert s["exact_duplicate_files"] == 3
    assert s["per_class_files"] == {"Normal": 7, "Osteopenia": 1, "Osteoporosis": 3}
    assert s["per_class_groups"] == {"Normal": 4, "Osteopenia": 1, "Osteoporosis": 3}
    assert s["cross_source_overlap"] == {"srcA & srcB": 1}
    by_name = {Path(f.path).name: f for f in res.files}
    assert by_name["normal_0439.jpg"].group == by_name["normal_0001.png"].group == by_name["two_normal_0001.png"].group
    assert by_name["N1.JPEG"].group == by_name["OP13.JPEG"].group != by_name["normal_0001.png"].group
    written = write_audit(res, tmp_path / "audit")
    for name in ("audit.json", "groups.csv", "report.md", "class_balance.png", "duplicates.png", "sizes.png", "conflicts.png"):
        assert (tmp_path / "audit" / name).stat().st_size > 0, name
    assert json.loads((tmp_path / "audit" / "audit.json").read_text())["distinct_groups"] == 7
    assert [f.group for f in read_groups_csv(written["groups.csv"])] == [f.group for f in res.files]
    assert "conflicting labels" in (tmp_path / "audit" / "report.md").read_text()


def test_unreadable_files_reported_and_skipped(mini_sources):
    bad_dir = mini_sources[0] / "Normal"
    (bad_dir / "empty.png").write_bytes(b"")
    (bad_dir / "notes.txt").write_text("not an image")
    Image.new("L", (100, 100), 0).save(bad_dir / "blank.png")
    res = audit_sources(mini_sources)
    s = res.summary
    assert s["unreadable"] == 2
    assert {Path(u["path"]).name for u in s["unreadable_files"]} == {"empty.png", "notes.txt"}
    assert s["blank_images"] == 1
    table = make_split(res.files, SplitOptions(val=0.2, test=0.2))
    assert not any(Path(r.path).name in ("empty.png", "notes.txt") for r in table.rows)
    assert table.info["unreadable_skipped"] == 2


def test_source_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        scan_sources([tmp_path / "nope"])
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.png").write_bytes(b"x")
    with pytest.raises(DataError, match="no class folders"):
        scan_sources([tmp_path / "flat"])
    (tmp_path / "hollow" / "Normal").mkdir(parents=True)
    with pytest.raises(DataError, match="is empty"):
        scan_sources([tmp_path / "hollow"])
    with pytest.raises(DataError, match="no data source"):
        scan_sources([])


def test_split_options_validated():
    with pytest.raises(ConfigError, match="--val and --test"):
        SplitOptions(val=0.6, test=0.5)
    with pytest.raises(ConfigError, match="--conflicts"):
        SplitOptions(conflicts="vote")
    with pytest.raises(ConfigError, match="--folds"):
        SplitOptions(folds=1)


def test_mini_split_conflicts_members_binary_labels(mini_sources):
    infos = audit_sources(mini_sources).files
    drop = make_split(infos, SplitOptions(val=0.2, test=0.2))
    assert "Osteopenia" not in drop.labels  # its only group conflicts with Normal and is dropped
    assert drop.info["dropped"]["conflicting_groups"] == 1
    one = make_split(infos, SplitOptions(val=0.2, test=0.2, members="one"))
    assert len(one.rows) == len({r.group for r in one.rows}) == 6
    rep = next(r for r in one.rows if r.group == next(f.group for f in infos if f.path.endswith("normal_0439.jpg")))
    assert not rep.path.endswith("normal_0439.jpg")  # the 128x256 copy is not the representative
    binary = make_split(infos, SplitOptions(val=0.2, test=0.2, binary=True))
    assert binary.labels == ["Normal", "LowBMD"]
    assert {r.orig_label for r in binary.rows if r.label == "LowBMD"} == {"Osteoporosis"}
    with pytest.raises(ConfigError, match="unknown label"):
        make_split(infos, SplitOptions(labels=("Normal", "Osteopenic")))
    only = make_split(infos, SplitOptions(labels=("Osteoporosis",), val=0.34, test=0.34))
    assert {r.label for r in only.rows} == {"Osteoporosis"}


@pytest.fixture(scope="module")
def full_audit(knee_sources):
    return audit_sources(knee_sources)


def _check_split(table):
    split_of_group = defaultdict(set)
    for r in table.rows:
        split_of_group[r.group].add(r.split)
    assert all(len(s) == 1 for s in split_of_group.values()), "a duplicate group spans two splits"
    # No file content (sha256) appears in two splits either.
    split_of_sha = defaultdict(set)
    for r in table.rows:
        split_of_sha[r.sha256].add(r.split)
    assert all(len(s) == 1 for s in split_of_sha.values())
    shares = {}
    for sp in ("train", "val", "test"):
        groups = {r.group: r.label for r in table.rows if r.split == sp}
        n = len(groups)
        assert n > 0
        shares[sp] = {lab: sum(v == lab for v in groups.values()) / n for lab in table.labels}
    for lab in table.labels:
        vals = [shares[sp][lab] for sp in shares]
        assert max(vals) - min(vals) <= 0.03, (lab, shares)


def test_full_split_is_leak_free_balanced_and_deterministic(full_audit, tmp_path):
    opts = SplitOptions(folds=5, seed=7)
    a = make_split(full_audit.files, opts)
    _check_split(a)
    write_split(a, tmp_path / "a")
    b = make_split(full_audit.files, opts)
    write_split(b, tmp_path / "b")
    assert (tmp_path / "a" / "split.csv").read_bytes() == (tmp_path / "b" / "split.csv").read_bytes()
    c = make_split(full_audit.files, SplitOptions(folds=5, seed=8))
    assert [r.split for r in c.rows] != [r.split for r in a.rows]
    # folds: every non-test group in exactly one fold, test rows in none, fold sizes balanced
    assert all(r.fold == -1 for r in a.rows if r.split == "test")
    fold_groups = Counter(r.fold for r in {r.group: r for r in a.rows if r.split != "test"}.values())
    assert sorted(fold_groups) == [0, 1, 2, 3, 4]
    assert max(fold_groups.values()) - min(fold_groups.values()) <= 2
    back = read_split(tmp_path / "a" / "split.csv")
    assert back.labels == ["Normal", "Osteopenia", "Osteoporosis"] and len(back.rows) == len(a.rows)
    assert back.folds == 5 and "group-aware" in back.info["protocol"]
    for fold in range(5):
        tr = {r.group for r in back.subset("train", fold)}
        va = {r.group for r in back.subset("val", fold)}
        assert tr and va and not tr & va


@pytest.mark.parametrize("opts", [SplitOptions(members="one", seed=1), SplitOptions(conflicts="majority", seed=2), SplitOptions(binary=True, seed=3)])
def test_full_split_variants_leak_free(full_audit, opts):
    _check_split(make_split(full_audit.files, opts))


def test_audit_counts_agree_with_independent_check(full_audit, knee_sources, tmp_path):
    write_audit(full_audit, tmp_path / "audit", plots=False)
    script = REPO / "benchmarks" / "data" / "independent_audit_check.py"
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "audit"), *map(str, knee_sources)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "all counts agree" in proc.stdout


def test_read_split_errors(tmp_path):
    with pytest.raises(DataError, match="no such split file"):
        read_split(tmp_path / "missing.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match="missing columns"):
        read_split(bad)
    bad.write_text("path,label,group,split\nx.png,Normal,1,holdout\n")
    with pytest.raises(DataError, match="unknown split 'holdout'"):
        read_split(bad)


def test_split_file_paths_are_relative_and_move_with_the_data(mini_sources, tmp_path):
    """split.csv stores paths relative to its own folder (issue 23, item 13): the split and the data
    beside it can be moved or shared together; an older split file with absolute paths still reads."""
    import csv
    import shutil

    table = split_sources(mini_sources, SplitOptions(val=0.2, test=0.2))
    write_split(table, tmp_path / "out" / "split")
    csv_path = tmp_path / "out" / "split" / "split.csv"
    stored = [row["path"] for row in csv.DictReader(csv_path.open(newline=""))]
    assert stored and all(not Path(p).is_absolute() and p.startswith("../../src") for p in stored), stored[:3]
    assert str(tmp_path) not in csv_path.read_text()
    back = read_split(csv_path)
    assert [r.path for r in back.rows] == [r.path for r in table.rows]
    assert all(Path(r.path).is_file() for r in back.rows)
    moved = tmp_path / "elsewhere" / "copy"  # the data and the split moved together, to another depth
    moved.mkdir(parents=True)
    for d in ("srcA", "srcB", "out"):
        shutil.move(str(tmp_path / d), str(moved / d))
    again = read_split(moved / "out" / "split" / "split.csv")
    assert all(Path(r.path).is_file() and str(moved) in r.path for r in again.rows)
    assert [(Path(r.path).name, r.split, r.group) for r in again.rows] == [(Path(r.path).name, r.split, r.group) for r in table.rows]
    # an old split file (absolute paths) reads as before
    write_split(again, tmp_path / "old", relative=False)
    old = [row["path"] for row in csv.DictReader((tmp_path / "old" / "split.csv").open(newline=""))]
    assert all(Path(p).is_absolute() for p in old)
    assert [r.path for r in read_split(tmp_path / "old" / "split.csv").rows] == [r.path for r in again.rows]


def test_split_sources_reuses_groups_csv(mini_sources, tmp_path):
    res = audit_sources(mini_sources)
    write_audit(res, tmp_path / "audit", plots=False)
    opts = SplitOptions(val=0.2, test=0.2)
    a = split_sources(mini_sources, opts, groups_csv=tmp_path / "audit" / "groups.csv")
    b = split_sources(mini_sources, opts)
    assert [(r.path, r.split) for r in a.rows] == [(r.path, r.split) for r in b.rows]


def test_group_source_follows_the_wani_rule_with_one_member(full_audit, tmp_path):
    """--members one keeps the largest copy, often a Kaggle re-encode of a Wani knee; the group's
    source must still be wani-mendeley (any Wani member), and survive the CSV round trip."""
    one = make_split(full_audit.files, SplitOptions(members="one", seed=0))
    wani_groups = {f.group for f in full_audit.files if f.source == "wani-mendeley"}
    kaggle_kept = [r for r in one.rows if r.group in wani_groups and r.source != "wani-mendeley"]
    assert kaggle_kept, "expected Wani radiographs represented by a Kaggle copy"
    assert all(r.group_source == "wani-mendeley" == r.domain for r in kaggle_kept)
    assert all(r.group_source != "wani-mendeley" for r in one.rows if r.group not in wani_groups)
    write_split(one, tmp_path / "s")
    back = read_split(tmp_path / "s" / "split.csv")
    assert [r.group_source for r in back.rows] == [r.group_source for r in one.rows]
    assert Counter(r.label for r in back.rows if r.domain == "wani-mendeley").keys() == {"Normal", "Osteopenia", "Osteoporosis"}


def test_members_per_source_keeps_one_copy_per_source_folder(full_audit):
    ps = make_split(full_audit.files, SplitOptions(members="per-source", seed=0, folds=5))
    one = make_split(full_audit.files, SplitOptions(members="one", seed=0, folds=5))
    by_group = defaultdict(list)
    for r in ps.rows:
        by_group[r.group].append(r.source)
    assert all(len(s) == len(set(s)) for s in by_group.values())  # at most one file per source folder
    assert any(len(s) > 1 for s in by_group.values())
    # the same groups in the same splits and folds as --members one
    assert {r.group: (r.split, r.fold) for r in ps.rows} == {r.group: (r.split, r.fold) for r in one.rows}
    wani_films = Counter(r.label for r in ps.rows if r.source == "wani-mendeley" and r.split != "test")
    assert wani_films["Normal"] > 0 and wani_films["Osteoporosis"] > 0  # Wani-framed films of every class


def test_a_split_from_an_audits_groups_keeps_only_the_sources_it_is_given(mini_sources, tmp_path):
    """--groups reuses an audit of more folders: the split holds the files of the folders named, and a
    folder the audit never saw is refused in one line."""
    from osteo_edge.data.report import write_audit
    from osteo_edge.data.split import SplitOptions, split_sources
    from osteo_edge.errors import DataError

    groups = write_audit(audit_sources(mini_sources), tmp_path / "audit", plots=False)["groups.csv"]
    a, b = mini_sources
    table = split_sources([a], SplitOptions(val=0.2, test=0.2, conflicts="drop"), groups_csv=groups)
    assert table.rows and all(str(a) in str(r.path) for r in table.rows)
    both = split_sources([a, b], SplitOptions(val=0.2, test=0.2, conflicts="drop"), groups_csv=groups)
    assert len(both.rows) > len(table.rows)
    with pytest.raises(DataError, match="no audited file under"):
        split_sources([a, tmp_path / "never-audited"], SplitOptions(), groups_csv=groups)
