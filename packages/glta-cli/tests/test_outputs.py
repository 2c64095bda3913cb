"""No command deletes, renames or overwrites a file it did not write (`glta_cli.outputs`)."""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from glta_cli.app import app
from glta_cli.outputs import (
    LOCK,
    MARKER,
    OutputError,
    check_output_dir,
    lock_run,
    output_kind,
    staged_dir,
    write_marker,
)
from glta_cli.pipeline import _start_run_dir, previous_dir

TRAIN = ["--epochs", "2", "--eval-every", "1", "--dim", "8", "--layers", "1",
         "--batch-size", "64", "--seed", "1", "--quiet"]


def _user_files(folder: Path) -> dict[Path, str]:
    """Write two files of the user's into ``folder`` (and one next to it); return them."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {folder / "notes.txt": "my notes\n", folder / "sub" / "keep.csv": "a,b\n1,2\n",
             folder.parent / f"{folder.name}-sibling.txt": "next to it\n"}
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return files


def _survived(files: dict[Path, str]) -> None:
    for path, text in files.items():
        assert path.read_text() == text, path
    for folder in {p.parent for p in files}:
        hidden = [p.name for p in folder.iterdir() if p.name.startswith(".") and
                  p.name != MARKER]
        assert not hidden, hidden  # no `.x.old`, no temporary folder left behind


def _refused(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error:") and result.stderr.strip().count("\n") == 0
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# -- data prepare ---------------------------------------------------------------------------


def test_prepare_never_touches_user_files(runner, ratings_csv, tmp_path):
    user = tmp_path / "mine"
    files = _user_files(user)
    result = runner.invoke(app, ["data", "prepare", str(ratings_csv), "--out", str(user)])
    _refused(result, str(user), "glta did not write")
    result = runner.invoke(app, ["data", "prepare", str(ratings_csv), "--out", str(user),
                                 "--overwrite"])
    _refused(result, "glta did not write")
    target = user / "notes.txt"
    result = runner.invoke(app, ["data", "prepare", str(ratings_csv), "--out", str(target)])
    _refused(result, "a file is there")
    _survived(files)
    # a folder of raw files prepared into itself
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "ratings.csv").write_text(ratings_csv.read_text())
    result = runner.invoke(app, ["data", "prepare", str(raw), "--format", "csv",
                                 "--out", str(raw)])
    _refused(result, "input")
    result = runner.invoke(app, ["data", "prepare", str(raw / "ratings.csv"),
                                 "--out", str(raw / ".." / "raw")])
    _refused(result, "input")
    assert (raw / "ratings.csv").read_text() == ratings_csv.read_text()


def test_prepare_next_to_user_files_and_overwrite_own(runner, ratings_csv, tmp_path):
    files = _user_files(tmp_path / "mine")
    out = tmp_path / "mine-ds"  # a sibling of the user's folder
    ok = runner.invoke(app, ["data", "prepare", str(ratings_csv), "--out", str(out)])
    assert ok.exit_code == 0, ok.output
    assert output_kind(out) == "dataset" and "items have text" in ok.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~_umask()
    again = runner.invoke(app, ["data", "prepare", str(ratings_csv), "--out", str(out)])
    _refused(again, "--overwrite")
    again = runner.invoke(app, ["data", "prepare", str(ratings_csv), "--out", str(out),
                                "--overwrite", "--seed", "4"])
    assert again.exit_code == 0, again.output
    (out / "my-notes.md").write_text("about this dataset\n")  # the user's, put inside it
    again = runner.invoke(app, ["data", "prepare", str(ratings_csv), "--out", str(out),
                                "--overwrite"])
    _refused(again, "also holds my-notes.md")
    files[out / "my-notes.md"] = "about this dataset\n"
    _survived(files)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    # an empty folder of the user's is fine to write into
    empty = tmp_path / "empty"
    empty.mkdir()
    assert runner.invoke(app, ["data", "prepare", str(ratings_csv), "--out", str(empty)]
                         ).exit_code == 0


def test_reprepare_with_options_is_refused(runner, prepared, tmp_path):
    out = tmp_path / "again"
    result = runner.invoke(app, ["data", "prepare", str(prepared), "--out", str(out),
                                 "--kcore", "3"])
    _refused(result, "prepared dataset", "k_core")
    assert not out.exists()
    result = runner.invoke(app, ["data", "prepare", str(prepared), "--out", str(out),
                                 "--max-users", "5"])
    assert result.exit_code == 0, result.output


# -- data export ----------------------------------------------------------------------------


def test_export_never_touches_user_files(runner, prepared, tmp_path):
    user = tmp_path / "mine"
    files = _user_files(user)
    _refused(runner.invoke(app, ["data", "export", str(prepared), "--out", str(user)]),
             "glta did not write")
    _refused(runner.invoke(app, ["data", "export", str(prepared), "--out", str(prepared)]),
             "input")
    _refused(runner.invoke(app, ["data", "export", str(prepared), "--out",
                                 str(user / "notes.txt")]), "a file is there")
    out = tmp_path / "mine-csv"
    assert runner.invoke(app, ["data", "export", str(prepared), "--out", str(out)]
                         ).exit_code == 0
    assert output_kind(out) == "export" and (out / "test.csv").is_file()
    _refused(runner.invoke(app, ["data", "export", str(prepared), "--out", str(out)]),
             "--overwrite")
    assert runner.invoke(app, ["data", "export", str(prepared), "--out", str(out),
                               "--overwrite"]).exit_code == 0
    (out / "notes.txt").write_text("mine\n")
    _refused(runner.invoke(app, ["data", "export", str(prepared), "--out", str(out),
                                 "--overwrite"]), "also holds notes.txt")
    files[out / "notes.txt"] = "mine\n"
    _survived(files)
    assert prepared.joinpath("dataset.json").is_file()


# -- graph train and recommend --------------------------------------------------------------


def test_graph_train_and_recommend_never_touch_user_files(runner, prepared, tmp_path):
    user = tmp_path / "mine"
    files = _user_files(user)
    _refused(runner.invoke(app, ["graph", "train", str(prepared), "--out", str(user), *TRAIN]),
             "glta did not write")
    _refused(runner.invoke(app, ["graph", "train", str(prepared), "--out", str(prepared),
                                 *TRAIN]), "input")
    _refused(runner.invoke(app, ["graph", "train", str(prepared), "--out",
                                 str(user / "notes.txt"), *TRAIN]), "a file is there")
    run = tmp_path / "mine-run"
    ok = runner.invoke(app, ["graph", "train", str(prepared), "--out", str(run), *TRAIN])
    assert ok.exit_code == 0, ok.output
    assert output_kind(run) == "run"
    again = runner.invoke(app, ["graph", "train", str(prepared), "--out", str(run), *TRAIN])
    assert again.exit_code == 0, again.output  # a run resumes
    _refused(runner.invoke(app, ["graph", "train", str(prepared), "--out", str(prepared)]),
             "input")
    _refused(runner.invoke(app, ["recommend", str(run), "--out", str(user)]),
             "a folder is there")
    recs = user / "recs.csv"
    recs.write_text("old\n")
    ok = runner.invoke(app, ["recommend", str(run), "--k", "2", "--out", str(recs)])
    assert ok.exit_code == 0, ok.output
    assert recs.read_text().startswith("user,item,rank,score")  # the named file is replaced
    files.pop(recs, None)
    _survived(files)


# -- pipeline -------------------------------------------------------------------------------


def test_pipeline_refuses_user_folders(runner, tmp_path):
    user = tmp_path / "mine"
    files = _user_files(user)
    for extra in ([], ["--restart"]):
        result = runner.invoke(app, ["pipeline", "--preset", "smoke", "--out", str(user),
                                     "--quiet", *extra])
        _refused(result, "glta did not write")
    assert not previous_dir(user).exists()
    result = runner.invoke(app, ["pipeline", "--preset", "smoke", "--out",
                                 str(user / "notes.txt"), "--quiet"])
    _refused(result, "a file is there")
    _survived(files)


def test_start_run_dir_restart_moves_only_runs(tmp_path):
    run = tmp_path / "run"
    assert _start_run_dir(run, restart=True) is None and output_kind(run) == "run"
    (run / "model.txt").write_text("old complete run")
    assert _start_run_dir(run, restart=False) is None and (run / "model.txt").exists()
    note = _start_run_dir(run, restart=True)
    assert "moved" in note and (previous_dir(run) / "model.txt").is_file()
    assert output_kind(run) == "run" and not (run / "model.txt").exists()
    (run / "partial").write_text("unfinished restart")
    note = _start_run_dir(run, restart=True)
    assert "discarded" in note and not (run / "partial").exists()
    assert (previous_dir(run) / "model.txt").read_text() == "old complete run"
    # RUN.previous that glta did not write: never replaced
    other = tmp_path / "other"
    _start_run_dir(other, restart=False)
    files = _user_files(previous_dir(other))
    with pytest.raises(OutputError, match="glta did not write"):
        _start_run_dir(other, restart=True)
    _survived(files)
    # the input may not be the run directory, nor inside it
    (run / "in.csv").write_text("u,i\n")
    with pytest.raises(OutputError, match="input"):
        _start_run_dir(run, restart=True, inputs=[run / "in.csv"])
    assert (run / "in.csv").is_file()


def _hold_lock(run: Path) -> subprocess.Popen:
    """Another process that holds ``run``'s lock until killed (returns once it holds it)."""
    code = ("import sys, time; from glta_cli.outputs import lock_run\n"
            "with lock_run(sys.argv[1]):\n    print('held', flush=True); time.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(run)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


@pytest.mark.skipif(sys.platform == "win32", reason="the run lock uses fcntl.flock (POSIX)")
def test_a_run_another_process_writes_is_refused_until_it_ends(runner, tmp_path):
    run = tmp_path / "run"
    assert _start_run_dir(run, restart=False) is None
    (run / "model.txt").write_text("the other process's run")
    holder = _hold_lock(run)
    try:
        assert (run / LOCK).read_text().strip() == str(holder.pid)
        for restart in (False, True):  # --restart may not move a run in use either
            with contextlib.ExitStack() as locks, pytest.raises(OutputError) as err:
                _start_run_dir(run, restart=restart, locks=locks)
            assert str(holder.pid) in str(err.value) and str(run) in str(err.value)
        assert not previous_dir(run).exists()
        result = runner.invoke(app, ["pipeline", "--preset", "smoke", "--out", str(run),
                                     "--quiet", "--restart"])
        _refused(result, str(run), f"pid {holder.pid}", "another glta process")
        # glta evaluate rewrites metrics.json: refused too while the run is being written
        _refused(runner.invoke(app, ["evaluate", str(run), "--quiet"]), f"pid {holder.pid}")
        assert (run / "model.txt").read_text() == "the other process's run"
        assert sorted(p.name for p in run.iterdir()) == sorted([LOCK, MARKER, "model.txt"])
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # kill -9 leaves no stale lock: the kernel dropped it with the process
    with contextlib.ExitStack() as locks:
        note = _start_run_dir(run, restart=True, locks=locks)
        assert "moved" in note and (previous_dir(run) / "model.txt").is_file()
        # the new run is locked while the stack is open, by this process
        with pytest.raises(OutputError, match=f"pid {os.getpid()}"), lock_run(run):
            pass
    with lock_run(run) as lock:  # released when the stack closed
        assert lock == run / LOCK


def test_runs_of_earlier_versions_still_resume(tmp_path):
    legacy = tmp_path / "legacy"
    (legacy / "state" / "pipeline").mkdir(parents=True)
    (legacy / "state" / "pipeline" / "stages.json").write_text('{"stages": {}}')
    (legacy / "resolved-config.toml").write_text("[run]\n")
    assert output_kind(legacy) == "run"
    assert _start_run_dir(legacy, restart=False) is None
    assert (legacy / "state" / "pipeline" / "stages.json").is_file()
    assert (legacy / MARKER).is_file()
    half = tmp_path / "half"
    half.mkdir()
    (half / "resolved-config.toml").write_text("[run]\n")  # no state/: not recognised
    with pytest.raises(OutputError):
        _start_run_dir(half, restart=True)


# -- the module itself ----------------------------------------------------------------------


def test_staged_dir_keeps_the_old_output_until_the_new_one_is_complete(tmp_path):
    out = tmp_path / "out"
    with staged_dir(out, "export") as staged:
        staged.mkdir()
        (staged / "train.csv").write_text("1")
    assert (out / "train.csv").read_text() == "1" and output_kind(out) == "export"
    with pytest.raises(RuntimeError), staged_dir(out, "export") as staged:
        staged.mkdir()
        (staged / "train.csv").write_text("2")
        raise RuntimeError("killed half-way")
    assert (out / "train.csv").read_text() == "1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert check_output_dir(out, "export", overwrite=True) == "same"
    with pytest.raises(OutputError, match="not a run"):
        check_output_dir(out, "run")
    write_marker(out, "dataset")
    assert output_kind(out) == "dataset"
    with pytest.raises(ValueError, match="unknown output kind"):
        write_marker(out, "thing")


# -- reading failures and format options through the CLI ------------------------------------


def test_read_failures_are_one_line_exit_2(runner, tmp_path):
    import gzip
    import json

    records = "".join(json.dumps({"reviewerID": f"u{i % 7}", "asin": f"a{i % 5}",
                                  "overall": 4.0, "unixReviewTime": 1_400_000_000 + i}) + "\n"
                      for i in range(3000)).encode()
    packed = gzip.compress(records)
    (tmp_path / "Books.json.gz").write_bytes(packed[: len(packed) // 2])
    ml = tmp_path / "ml-100k"
    ml.mkdir()
    (ml / "u.data").write_bytes(b"")
    for source, fragment in ((tmp_path / "Books.json.gz", "truncated"),
                             (ml, "u.data: the file is empty")):
        out = tmp_path / "never"
        result = runner.invoke(app, ["data", "prepare", str(source), "--out", str(out)])
        _refused(result, str(source), fragment)
        assert "Aborted" not in result.output and not out.exists()


def test_tab_separator_from_the_command_line(runner, tmp_path):
    path = tmp_path / "ratings.dat"
    path.write_text("user_id\titem_id\trating\n" + "".join(
        f"u{u}\ti{(u + k) % 6}\t{k + 1}\n" for u in range(8) for k in range(5)))
    for n, sep in enumerate(("sep=\\t", "sep=\t", "sep=tab")):
        out = tmp_path / f"ds{n}"
        result = runner.invoke(app, ["data", "prepare", str(path), "--format", "csv",
                                     "--option", sep, "--out", str(out)])
        assert result.exit_code == 0, (sep, result.output)
    info = runner.invoke(app, ["data", "info", str(tmp_path / "ds0")])
    assert info.exit_code == 0 and '"items_with_text": 0' in info.stdout
    assert "0 of 6 items have text" in info.stderr


def test_missing_metadata_is_a_warning_line(runner, tmp_path):
    import json

    reviews = tmp_path / "Toys.jsonl"
    reviews.write_text("".join(json.dumps({
        "user_id": f"u{u}", "asin": "v", "parent_asin": f"P{(u + k) % 5}", "rating": 5.0,
        "timestamp": 1_600_000_000_000 + 1000 * (5 * u + k)}) + "\n"
        for u in range(8) for k in range(4)))
    result = runner.invoke(app, ["data", "prepare", str(reviews), "--out",
                                 str(tmp_path / "ds")])
    assert result.exit_code == 0, result.output
    assert any(line.startswith("warning: ") and "meta_Toys.json[l]" in line
               for line in result.stderr.splitlines())
    assert "0 of 5 items have text" in result.stderr
