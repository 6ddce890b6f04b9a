"""Finding the inputs (fkpbatch.discover): folders walked in order, hidden files and symlink loops
skipped, --from-list names taken exactly, FIFOs and unreadable folders neither hanging a run nor
hidden from it, and names that are unambiguous and lead back to their files."""

import io
import os

import pandas as pd
import pytest

from fkpbatch.annotate import annotation_path
from fkpbatch.discover import discover, display_name, real_name
from fkpbatch.errors import UsageError

from conftest import FAST, fkpbatch_process, gradient_image, grey_pngs, invoke


@pytest.fixture()
def tree(tmp_path):
    for name in ["b.jpg", "a.jpg", "sub/c.jpg", "sub/deeper/d.jpg", ".hidden/e.jpg", "sub/.f.jpg"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub" / "loop").symlink_to(tmp_path, target_is_directory=True)
    return tmp_path


def test_folders_are_walked_sorted_skipping_hidden_and_symlink_loops(tree):
    found = discover([tree])
    assert [f.name for f in found.files] == [f"{tree}/{n}" for n in ["a.jpg", "b.jpg", "sub/c.jpg", "sub/deeper/d.jpg"]]
    assert found.hidden == 2
    assert found.files[2].relative == f"{tree.name}/sub/c.jpg"


def test_no_recursive_stays_in_the_folder(tree):
    assert [f.name for f in discover([tree], recursive=False).files] == [f"{tree}/a.jpg", f"{tree}/b.jpg"]


def test_missing_input_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="nothing.jpg: no such file or folder"):
        discover([tmp_path / "nothing.jpg"])


def test_from_list_reads_stdin(tree, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO(f"{tree}/b.jpg\n\n{tree}/sub/c.jpg\n"))
    assert [f.name for f in discover([], from_list="-").files] == [f"{tree}/b.jpg", f"{tree}/sub/c.jpg"]


class _BytesStdin:
    """sys.stdin as a pipe gives it: text on top of the raw bytes in ``buffer``."""

    def __init__(self, data: bytes):
        self.buffer = io.BytesIO(data)


def test_a_list_names_files_exactly_whatever_their_characters(tmp_path, monkeypatch):
    names = ["x.jpg", "x.jpg ", " x.jpg", "#2.jpg", "a\x85b.jpg", "c\u2028d.jpg", "e\x0cf.jpg", "g\\h.jpg"]
    raw = [os.fsencode(n) for n in names] + [b"n\xff.jpg"]
    for name in raw:
        (tmp_path / os.fsdecode(name)).write_bytes(b"x")
    expected = sorted(display_name(str(tmp_path / os.fsdecode(n))) for n in raw)
    lines = b"".join(bytes(tmp_path) + b"/" + n + b"\n" for n in raw)
    listing = tmp_path / "list.txt"
    for content in (lines, lines.replace(b"\n", b"\r\n"), lines.replace(b"\n", b"\0")):
        listing.write_bytes(content)  # LF, CRLF and NUL (find -print0) separated; one name is not UTF-8
        assert [f.name for f in discover([], from_list=str(listing)).files] == expected
        monkeypatch.setattr("sys.stdin", _BytesStdin(content))
        assert [f.name for f in discover([], from_list="-").files] == expected
    listing.write_bytes(lines + bytes(tmp_path) + b"/x.jpg  \n")  # a name that is not there: refused, named
    with pytest.raises(UsageError, match=r"--from-list .*list.txt: '.*/x.jpg  ': no such file or folder"):
        discover([], from_list=str(listing))


def test_from_list_cli_predicts_every_listed_name_and_nul_lists_from_stdin(tmp_path, tiny_weights):
    names = ["x.jpg", "x.jpg ", "#2.jpg"]
    for name in names:
        gradient_image().save(tmp_path / name, format="JPEG")
    base = ["predict", "-w", tiny_weights, *FAST, "-q", "--from-list"]
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"{tmp_path / n}\n" for n in names))
    result = invoke(*base, listing)
    assert result.exit_code == 0, result.output
    assert sorted(pd.read_csv(io.StringIO(result.stdout))["image"]) == sorted(str(tmp_path / n) for n in names)
    nul = "".join(f"{tmp_path / n}\0" for n in names)
    result = invoke(*base, "-", input=nul)
    assert result.exit_code == 0, result.output
    assert sorted(pd.read_csv(io.StringIO(result.stdout))["image"]) == sorted(str(tmp_path / n) for n in names)


def test_names_are_unambiguous_and_reversible(tmp_path):
    byte_name, literal_name = b"a\xff.jpg", b"a\\xff.jpg"  # the byte 0xFF, and backslash x f f
    for name in (byte_name, literal_name, b"b\\c.jpg"):
        (tmp_path / os.fsdecode(name)).write_bytes(b"x")
    found = discover([tmp_path]).files
    names = [f.name for f in found]
    assert names == [f"{tmp_path}/a\\\\xff.jpg", f"{tmp_path}/a\\xff.jpg", f"{tmp_path}/b\\\\c.jpg"]
    assert len(set(names)) == 3  # two files never share a name, so none is dropped as a double
    for item in found:
        assert real_name(item.name) == str(item.path) and os.path.exists(real_name(item.name))
    targets = {annotation_path(f.relative, tmp_path / "annotated") for f in found}
    assert {t.name for t in targets} == {os.fsdecode(n) for n in (byte_name, literal_name, b"b\\c.jpg")}


def test_resume_and_merge_match_escaped_names(tmp_path, tiny_weights):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in (b"a\xff.jpg", b"a\\xff.jpg", b"b\\c.jpg"):
        gradient_image().save(folder / os.fsdecode(name), format="JPEG")
    base = ["predict", folder, "-w", tiny_weights, *FAST, "-q"]
    outputs = []
    for k in range(2):
        out = tmp_path / f"shard{k}.csv"
        assert invoke(*base, "--shard", f"{k}/2", "-o", out).exit_code == 0
        resumed = invoke(*base, "--shard", f"{k}/2", "-o", out, "--resume")
        assert resumed.exit_code == 0, resumed.output  # nothing redone, nothing doubled
        outputs.append(out)
    merged = tmp_path / "all.csv"
    result = invoke("merge", *outputs, "-o", merged, "--check", folder)
    assert result.exit_code == 0, result.output
    assert sorted(pd.read_csv(merged)["image"]) == sorted(
        f"{folder}/{n}" for n in ("a\\\\xff.jpg", "a\\xff.jpg", "b\\\\c.jpg")
    )


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifos_are_skipped_and_counted_never_opened(tmp_path, tiny_weights):
    folder = grey_pngs(tmp_path / "in", 2)
    os.mkfifo(folder / "pipe.jpg")
    os.mkfifo(tmp_path / "given.png")
    listing = tmp_path / "list.txt"
    listing.write_text(f"{tmp_path / 'given.png'}\n")
    out = tmp_path / "out.csv"
    result = fkpbatch_process(
        "predict",
        folder,
        folder / "pipe.jpg",
        "--from-list",
        listing,
        "-w",
        tiny_weights,
        "--workers",
        "1",
        "--detect",
        "never",
        "-o",
        out,
        "--strict",
        timeout=90,
    )
    assert result.returncode == 0, result.stderr
    assert "2 images" in result.stderr and "2 skipped" in result.stderr
    assert sorted(pd.read_csv(out)["image"]) == sorted(str(p) for p in folder.glob("p*.png"))


def test_unreadable_folders_are_error_rows_and_fail_strict(tmp_path, tiny_weights, monkeypatch):
    folder = grey_pngs(tmp_path / "in", 1)
    locked = grey_pngs(folder / "locked", 1)
    real_scandir = os.scandir

    def scandir(path="."):
        if os.path.abspath(path) == str(locked):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    out = tmp_path / "out.csv"
    result = invoke("predict", folder, "--strict", "-w", tiny_weights, *FAST, "-o", out)
    assert result.exit_code == 1, result.output
    rows = pd.read_csv(out, keep_default_na=False).set_index("image")
    assert rows.loc[str(locked), "status"] == "error" and "cannot read folder" in rows.loc[str(locked), "error"]
    assert rows.loc[str(folder / "p0.png"), "status"] == "ok"


def test_an_explicit_symlink_loop_is_one_error_row(tmp_path, tiny_weights):
    folder = grey_pngs(tmp_path / "in", 1)
    loop = tmp_path / "loop.jpg"
    loop.symlink_to(loop)
    out = tmp_path / "out.csv"
    result = invoke("predict", folder, loop, "-w", tiny_weights, *FAST, "-o", out)
    assert result.exit_code == 0 and "Traceback" not in result.output
    rows = pd.read_csv(out, keep_default_na=False).set_index("image")
    assert rows.loc[str(loop), "status"] == "error" and "loop" in rows.loc[str(loop), "error"]
