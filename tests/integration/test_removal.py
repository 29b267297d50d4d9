"""Removing a big tree with several threads: everything goes, nothing outside it does."""

from __future__ import annotations

from pathlib import Path

from sage_tasks.gitops.removal import remove_tree


def test_a_tree_of_many_folders_is_removed_whole_and_links_out_of_it_are_not_followed(
    tmp_path: Path,
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep\n")
    root = tmp_path / "tree"
    for i in range(60):
        folder = root / "src" / f"d{i:02d}" / "sub"
        folder.mkdir(parents=True)
        (folder / "f.txt").write_text(f"{i}\n")
        (folder.parent / "g.txt").write_text(f"{i}\n")
    (root / "top.txt").write_text("top\n")
    (root / "src" / "link").symlink_to(outside, target_is_directory=True)
    locked = root / "src" / "d07" / "locked"
    locked.mkdir()
    (locked / "f").write_text("x")
    locked.chmod(0)
    remove_tree(root)
    assert not root.exists()
    assert (outside / "keep.txt").read_text() == "keep\n"


def test_a_file_or_a_missing_path_is_fine(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    remove_tree(tmp_path / "f")
    remove_tree(tmp_path / "missing")
    assert list(tmp_path.iterdir()) == []
