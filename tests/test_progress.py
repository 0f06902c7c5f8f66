"""Step 1's progress file: one appended line a query, folded in atomically, safe to cut."""

from __future__ import annotations

import json
from pathlib import Path

from yandex_reverse.crawl.progress import PROGRESS_FILE, Progress, journal_of, read_progress
from yandex_reverse.crawl.queries import Query


def test_each_record_is_one_appended_line_and_the_end_folds_them_in(tmp_path: Path) -> None:
    path = tmp_path / "XHR" / PROGRESS_FILE
    progress = Progress(path)
    for i in range(3):
        progress.record(f"{i}.jpg", status="done", pages=i)
    assert not path.exists()  # nothing rewritten per query
    lines = journal_of(path).read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)[0] for line in lines] == ["0.jpg", "1.jpg", "2.jpg"]
    progress.close()
    assert not journal_of(path).exists()
    images = json.loads(path.read_text(encoding="utf-8"))["images"]
    assert {name: r["pages"] for name, r in images.items()} == {"0.jpg": 0, "1.jpg": 1, "2.jpg": 2}


def test_an_interrupted_run_keeps_every_whole_line_and_drops_a_cut_one(tmp_path: Path) -> None:
    path = tmp_path / PROGRESS_FILE
    first = Progress(path)
    first.record("a.jpg", status="failed")
    first.close()  # an earlier run, folded in
    second = Progress(path)
    second.record("a.jpg", status="done", pages=5)  # the later record of a query wins
    second.record("b.jpg", status="done", pages=2)
    # the process is killed while writing a third line: no close()
    with journal_of(path).open("ab") as handle:
        handle.write(b'["c.jpg",{"status":"do')
    images, had_journal = read_progress(path)
    assert had_journal and set(images) == {"a.jpg", "b.jpg"}
    assert images["a.jpg"]["status"] == "done" and images["a.jpg"]["pages"] == 5
    third = Progress(path)  # the re-run folds the journal in at once
    assert not journal_of(path).exists()
    third.record("c.jpg", status="done", pages=1)
    third.close()
    images = json.loads(path.read_text(encoding="utf-8"))["images"]
    assert {n: r["status"] for n, r in images.items()} == {
        "a.jpg": "done",
        "b.jpg": "done",
        "c.jpg": "done",
    }


def test_a_cut_line_left_in_the_journal_does_not_swallow_the_next_record(tmp_path: Path) -> None:
    path = tmp_path / PROGRESS_FILE
    journal_of(path).write_bytes(b'["x.jpg",{"status":"done"}]\n["y.jpg",{"sta')
    images, _ = read_progress(path)
    assert set(images) == {"x.jpg"}
    progress = Progress.__new__(Progress)  # appending after the cut line, before any fold
    progress.path, progress.journal, progress._fd, progress.images = (
        path,
        journal_of(path),
        None,
        images,
    )
    progress.record("z.jpg", status="done")
    progress._close_journal()
    assert set(read_progress(path)[0]) == {"x.jpg", "z.jpg"}


def test_a_finished_photo_is_skipped_only_while_it_is_the_same_file(tmp_path: Path) -> None:
    photo = tmp_path / "cat.jpg"
    photo.write_bytes(b"\xff\xd8 one")
    stat = photo.stat()
    path = tmp_path / PROGRESS_FILE
    progress = Progress(path)
    progress.record("cat.jpg", status="done", size=stat.st_size, mtime_ns=stat.st_mtime_ns)
    assert Progress(path).done(Query("cat.jpg", path=photo))
    photo.write_bytes(b"\xff\xd8 another photo")
    assert not Progress(path).done(Query("cat.jpg", path=photo))


def test_a_kill_between_the_fold_and_the_journal_removal_replays_harmlessly(
    tmp_path: Path,
) -> None:
    path = tmp_path / PROGRESS_FILE
    progress = Progress(path)
    progress.record("a.jpg", status="failed")
    progress.record("a.jpg", status="done", pages=3)
    progress.record("b.jpg", status="captcha")
    journal = journal_of(path).read_bytes()
    progress.close()  # folded in and removed...
    journal_of(path).write_bytes(journal)  # ...but killed before the removal: it is back
    folded = json.loads(path.read_text(encoding="utf-8"))["images"]
    images, had_journal = read_progress(path)
    assert had_journal and images == folded
    again = Progress(path)  # the re-run folds it in once more
    assert not journal_of(path).exists()
    assert again.images == folded
    assert {n: r["status"] for n, r in folded.items()} == {"a.jpg": "done", "b.jpg": "captcha"}
