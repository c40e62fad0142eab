"""Ignore rules: --exclude globs and .assetcacheignore files (gitignore syntax)."""

from __future__ import annotations

import os

import pytest

from assetcache._errors import ConfigurationError
from assetcache._ignore import excluded_file, rules_for


def walk(root, rules):
    out = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        rules.prune(folder, dirs, files)
        out += [os.path.relpath(os.path.join(folder, f), root) for f in sorted(files)]
    return out


@pytest.fixture
def tree(tmp_path):
    for rel in ["a.png", "b.tmp", "drafts/c.png", "x/drafts/d.png", "x/e.png", "x/keep.tmp"]:
        p = tmp_path / "root" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    return tmp_path / "root"


def test_no_rules_keep_everything(tree):
    rules = rules_for(tree)
    assert not rules
    assert len(walk(tree, rules)) == 6


def test_exclude_globs_use_gitignore_syntax(tree):
    rules = rules_for(tree, ["*.tmp", "drafts/", "!keep.tmp"])
    assert walk(tree, rules) == ["a.png", "x/e.png", "x/keep.tmp"]
    anchored = rules_for(tree, ["/drafts/"])
    assert "x/drafts/d.png" in walk(tree, anchored)
    assert "drafts/c.png" not in walk(tree, anchored)


def test_ignore_file_in_the_folder_and_above(tree):
    (tree / ".assetcacheignore").write_text("# comment\n*.tmp\n")
    (tree.parent / ".assetcacheignore").write_text("drafts/\n")
    rules = rules_for(tree)
    assert walk(tree, rules) == ["a.png", "x/e.png"]
    # --exclude comes last and can re-include
    assert "b.tmp" in walk(tree, rules_for(tree, ["!b.tmp"]))


def test_nearest_ignore_file_decides_last(tree):
    (tree.parent / ".assetcacheignore").write_text("*.tmp\n")
    (tree / ".assetcacheignore").write_text("!b.tmp\n")
    assert "b.tmp" in walk(tree, rules_for(tree))
    assert "x/keep.tmp" not in walk(tree, rules_for(tree))


def test_named_file_checked_against_excludes_only():
    assert excluded_file("some/dir/a.tmp", ["*.tmp"])
    assert not excluded_file("some/dir/a.png", ["*.tmp"])
    assert not excluded_file("a.tmp", [])


def test_unreadable_ignore_file_is_a_clear_error(tree):
    (tree / ".assetcacheignore").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ConfigurationError, match=".assetcacheignore"):
        rules_for(tree)
