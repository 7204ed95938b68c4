"""The checkpoint directory protocol (learner/ckpt_files.py) on plain files."""

from __future__ import annotations

from asyncrl.learner import ckpt_files as cf


def _complete(root, *tags):
    for tag in tags:
        (root / tag).mkdir(parents=True)
        (root / tag / "state.pt").write_text(tag)


def test_tags_order_by_version_then_repeat(tmp_path):
    # v10 after v9 numerically (not as strings); v3.1 is a second save at version 3.
    _complete(tmp_path, "v10", "v9", "v3.1", "v3")
    (tmp_path / ".tmp-v11").mkdir()
    (tmp_path / ".trash-v2").mkdir()
    (tmp_path / "vx").mkdir()
    assert cf.complete_tags(tmp_path) == ["v3", "v3.1", "v9", "v10"]
    assert cf.tag_key("v3.1") == (3, 1) and cf.tag_key("latest") is None


def test_next_tag_never_reuses_a_name(tmp_path):
    assert cf.next_tag(tmp_path / "missing", 4) == "v4"
    _complete(tmp_path, "v4")
    (tmp_path / ".tmp-v4.1").mkdir()  # an interrupted second save at version 4
    assert cf.next_tag(tmp_path, 4) == "v4.2"
    assert cf.next_tag(tmp_path, 5) == "v5"


def test_resolve_follows_the_pointer_then_falls_back(tmp_path):
    assert cf.resolve(tmp_path) is None
    _complete(tmp_path, "v3", "v6")
    cf.write_pointer(tmp_path, "v3")
    # The pointer is the truth even when a newer complete tag exists (a kill between the
    # rename and the pointer update).
    assert cf.resolve(tmp_path) == "v3"
    cf.write_pointer(tmp_path, "v9")  # names nothing: newest complete instead
    assert cf.resolve(tmp_path) == "v6"
    (tmp_path / ".tmp-v12").mkdir()  # never complete, never chosen
    cf.write_pointer(tmp_path, ".tmp-v12")
    assert cf.resolve(tmp_path) == "v6"
    (tmp_path / "latest").unlink()
    assert cf.resolve(tmp_path) == "v6"


def test_commit_and_pointer_leave_no_temporaries(tmp_path):
    tmp = tmp_path / ".tmp-v2"
    tmp.mkdir()
    (tmp / "a.pt").write_text("x")
    cf.commit(tmp_path, "v2")
    cf.write_pointer(tmp_path, "v2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "v2"]
    assert (tmp_path / "latest").read_text() == "v2"
    assert (tmp_path / "v2" / "a.pt").read_text() == "x"


def test_clean_stale_and_prune(tmp_path):
    _complete(tmp_path, "v1", "v2", "v3")
    (tmp_path / ".tmp-v4").mkdir()
    (tmp_path / ".trash-v0").mkdir()
    (tmp_path / ".tmp-latest").write_text("v4")
    assert sorted(cf.clean_stale(tmp_path)) == [".tmp-latest", ".tmp-v4", ".trash-v0"]
    assert cf.prune(tmp_path, ["v2", "v3"]) == ["v1"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v2", "v3"]
    cf.remove(tmp_path, "v9")  # absent: nothing to do
