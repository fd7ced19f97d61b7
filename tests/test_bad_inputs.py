"""The catalogue of bad inputs and faults, run through the command line as a user would.

Each kind builds its bad input in a fresh folder (tiny volumes, a pointwise model), runs
``lesionseg`` and asserts: exit code 1, exactly one ``ERROR`` line naming the file or key,
no traceback, no output written where none should be, and no earlier result lost.
"""

from __future__ import annotations

import gzip
import hashlib
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import REPO, make_case, write_nifti

from lesionseg.cli import main
from lesionseg.config import Config, DataConfig, InferConfig, ModelConfig, PatchConfig, save_config

keras = pytest.importorskip("keras")

SMOKE = REPO / "pipelines" / "smoke.toml"


def _tiny_run(run: Path) -> Path:
    """A run folder with a pointwise 'network' emitting logits (no training needed)."""
    inp = keras.Input((None, None, None, 2))
    model = keras.Model(inp, keras.layers.Conv3D(1, 1, name="logits")(inp))
    run.mkdir(parents=True)
    model.save(run / "model.keras")
    config = Config(data=DataConfig(channels=("flair", "t1")), patches=PatchConfig(size=(8, 8, 8)),
                    model=ModelConfig(depth=2, base_filters=4), infer=InferConfig(overlap=0.25, batch_size=4))
    save_config(config, run / "config.yaml")
    return run


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """Tiny labelled data (three cases), a tiny run and a trained one, copied by each kind that changes them."""
    root = tmp_path_factory.mktemp("base")
    for n, name in enumerate(("caseA", "caseB", "caseC")):
        make_case(root / "data", name, shape=(16, 18, 14), lesions=((8, 9, 7, 2),), seed=n)
    _tiny_run(root / "run")
    assert main(["-q", *_TRAIN_ARGS(root / "data", root / "trained"), "--set", "train.epochs=1",
                 "--set", "train.steps_per_epoch=1"]) == 0
    return root


def _TRAIN_ARGS(data: Path, out: Path) -> list[str]:
    return ["train", "--config", str(SMOKE), "--data", str(data), "--out", str(out), "--set", "train.val_cases=[caseC]"]


@dataclass
class Kind:
    """One bad input: how to build it, what the one error line must say, what must be left alone."""

    build: Callable[[Path, Path], list[str]]
    message: str
    absent: tuple[str, ...] = ()
    intact: tuple[str, ...] = field(default_factory=tuple)


def _copy(base: Path, w: Path, *names: str) -> None:
    for name in names:
        shutil.copytree(base / name, w / name)


def _train(extra: list[str]) -> Callable[[Path, Path], list[str]]:
    def build(base: Path, w: Path) -> list[str]:
        _copy(base, w, "data")
        return ["train", "--config", str(SMOKE), "--data", str(w / "data"), "--out", str(w / "X"),
                "--set", "train.val_cases=[caseC]", *extra]
    return build


def _with_file(name: str, content: bytes) -> Callable[[Path, Path], list[str]]:
    def build(base: Path, w: Path) -> list[str]:
        _copy(base, w, "data")
        (w / name).write_bytes(content)
        return ["train", "--config", str(w / name), "--data", str(w / "data"), "--out", str(w / "X")]
    return build


def _infer_on(change: Callable[[Path], None]) -> Callable[[Path, Path], list[str]]:
    def build(base: Path, w: Path) -> list[str]:
        _copy(base, w, "data", "run")
        change(w / "data" / "caseB")
        return ["infer", "--model", str(w / "run"), "--input", str(w / "data"), "--out", str(w / "P")]
    return build


def _train_on(change: Callable[[Path], None]) -> Callable[[Path, Path], list[str]]:
    def build(base: Path, w: Path) -> list[str]:
        argv = _train([])(base, w)
        change(w / "data" / "caseB")
        return argv
    return build


def _blank(case: Path) -> None:
    write_nifti(case / "flair.nii.gz", np.zeros((16, 18, 14), np.float32))


def _nan(case: Path) -> None:
    img = nib.load(case / "t1.nii.gz")
    data = np.asarray(img.dataobj, np.float32)
    data[3, 3, 3] = np.nan
    write_nifti(case / "t1.nii.gz", data)


def _singular_affine(case: Path) -> None:
    """An sform whose last row is zeros and no qform: the exam has no orientation or slice thickness."""
    img = nib.load(case / "flair.nii.gz")
    header = img.header.copy()
    header.set_qform(None, code=0)
    header["srow_z"] = [0.0, 0.0, 0.0, 0.0]
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), None, header=header), case / "flair.nii.gz")


def _header_claims_more(case: Path) -> None:
    img = nib.load(case / "flair.nii.gz")
    header = img.header.copy()
    header.set_data_shape((1000, 1000, 1000))
    header["vox_offset"] = 352
    raw = header.binaryblock + b"\0" * 4 + np.asarray(img.dataobj, np.float32).tobytes()
    (case / "flair.nii.gz").write_bytes(gzip.compress(raw))


def _almost_binary_mask(case: Path) -> None:
    mask = np.asarray(nib.load(case / "lesion_mask.nii.gz").dataobj, np.float64)
    mask[mask > 0] = 1.0000001
    write_nifti(case / "lesion_mask.nii.gz", mask)


def _no_mask(case: Path) -> None:
    (case / "lesion_mask.nii.gz").unlink()


def _model_bytes(data: Callable[[bytes], bytes]) -> Callable[[Path, Path], list[str]]:
    def build(base: Path, w: Path) -> list[str]:
        _copy(base, w, "data", "run")
        model = w / "run" / "model.keras"
        model.write_bytes(data(model.read_bytes()))
        return ["infer", "--model", str(w / "run"), "--input", str(w / "data"), "--out", str(w / "P")]
    return build


def _no_config(base: Path, w: Path) -> list[str]:
    _copy(base, w, "data", "run")
    (w / "run" / "config.yaml").unlink()
    return ["infer", "--model", str(w / "run"), "--input", str(w / "data"), "--out", str(w / "P")]


def _out_is_file(command: str) -> Callable[[Path, Path], list[str]]:
    def build(base: Path, w: Path) -> list[str]:
        _copy(base, w, "data", "run")
        (w / "O").write_text("a file\n")
        return {
            "infer": ["infer", "--model", str(w / "run"), "--input", str(w / "data"), "--out", str(w / "O")],
            "train": ["train", "--config", str(SMOKE), "--data", str(w / "data"), "--out", str(w / "O")],
            "evaluate": ["evaluate", "--pred", str(w / "data"), "--truth", str(w / "data"), "--out", str(w / "O")],
            "patches": ["patches", "--config", str(SMOKE), "--data", str(w / "data"), "--out", str(w / "O")],
        }[command]
    return build


def _out_under_file(command: str) -> Callable[[Path, Path], list[str]]:
    def build(base: Path, w: Path) -> list[str]:
        argv = _out_is_file(command)(base, w)
        argv[argv.index(str(w / "O"))] = str(w / "O" / "sub")
        return argv
    return build


def _infer_to(out: Path) -> Callable[[Path, Path], list[str]]:
    def build(base: Path, w: Path) -> list[str]:
        _copy(base, w, "data", "run")
        return ["infer", "--model", str(w / "run"), "--input", str(w / "data"), "--out", str(out)]
    return build


def _compare_into_folder(base: Path, w: Path) -> list[str]:
    (w / "R").mkdir()
    (w / "R" / "summary.csv").write_text("cases,GT,TP,FN,FP\n1,1,1,0,0\n")
    return ["compare", str(w / "R"), "--out", str(w)]


def _infer_into_input(base: Path, w: Path) -> list[str]:
    _copy(base, w, "data", "run")
    return ["infer", "--model", str(w / "run"), "--input", str(w / "data"), "--out", str(w / "data" / "pred")]


def _mixed_predictions(base: Path, w: Path) -> list[str]:
    """PRED holds three cases of one model and one case re-predicted by another model."""
    _copy(base, w, "data", "run")
    assert main(["-q", "infer", "--model", str(w / "run"), "--input", str(w / "data"), "--out", str(w / "P")]) == 0
    other = w / "run2"
    shutil.copytree(w / "run", other)
    model = keras.saving.load_model(other / "model.keras")
    model.get_layer("logits").set_weights([w_ * 2 for w_ in model.get_layer("logits").get_weights()])
    model.save(other / "model.keras")
    assert main(["-q", "infer", "--model", str(other), "--input", str(w / "data" / "caseB"), "--out", str(w / "P")]) == 0
    return ["evaluate", "--pred", str(w / "P"), "--truth", str(w / "data"), "--out", str(w / "R")]


def _earlier_run(extra: list[str], change: Callable[[Path], None] = lambda w: None) -> Callable[[Path, Path], list[str]]:
    """`train --out X` where X holds a finished earlier run (a copy of the trained one)."""
    def build(base: Path, w: Path) -> list[str]:
        _copy(base, w, "data")
        shutil.copytree(base / "trained", w / "X")
        change(w)
        return [*_TRAIN_ARGS(w / "data", w / "X"), *extra]
    return build


def _truncate_checkpoint(w: Path) -> None:
    last = w / "X" / "checkpoint" / "last.npz"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])


def _with_file_and(name: str, content: bytes, extra: list[str]) -> Callable[[Path, Path], list[str]]:
    def build(base: Path, w: Path) -> list[str]:
        return [*_with_file(name, content)(base, w), *extra]
    return build


def _run_config(text: str) -> Callable[[Path, Path], list[str]]:
    """infer with a run whose stored config.yaml was cut down to ``text``."""
    def build(base: Path, w: Path) -> list[str]:
        _copy(base, w, "data", "run")
        (w / "run" / "config.yaml").write_text(text)
        return ["infer", "--model", str(w / "run"), "--input", str(w / "data"), "--out", str(w / "P")]
    return build


def _state_json(text: str) -> Callable[[Path], None]:
    def change(w: Path) -> None:
        (w / "X" / "checkpoint" / "state.json").write_text(text)
    return change


def _damage_history(w: Path) -> None:
    path = w / "X" / "history.csv"
    lines = path.read_text().splitlines()
    lines[1] = "x," + lines[1].split(",", 1)[1]
    path.write_text("\n".join(lines) + "\n")


def _config_inside_out(base: Path, w: Path) -> list[str]:
    from lesionseg.config import load_config

    _copy(base, w, "data")
    save_config(load_config(SMOKE), w / "X" / "config.yaml")
    return ["train", "--config", str(w / "X" / "config.yaml"), "--data", str(w / "data"), "--out", str(w / "X")]


def _patches_into_run(base: Path, w: Path) -> list[str]:
    _copy(base, w, "data")
    shutil.copytree(base / "trained", w / "X")
    return ["patches", "--config", str(SMOKE), "--data", str(w / "data"), "--out", str(w / "X"),
            "--set", "data.normalization=minmax"]


def _thick_slices_on(change: Callable[[Path], None]) -> Callable[[Path, Path], list[str]]:
    def build(base: Path, w: Path) -> list[str]:
        _copy(base, w, "data")
        change(w / "data" / "caseB")
        return ["thick-slices", "--data", str(w / "data"), "--out", str(w / "T")]
    return build


def _check_channels(channels: str) -> Callable[[Path, Path], list[str]]:
    def build(base: Path, w: Path) -> list[str]:
        _copy(base, w, "data")
        return ["check", str(w / "data"), "--channels", channels]
    return build


_RUN_FILES = ("X/model.keras", "X/config.yaml", "X/history.csv", "X/split.csv", "X/checkpoint/state.json")

KINDS: dict[str, Kind] = {
    # configuration: refused at load, before the backend or the data
    "config typo in a later stage": Kind(_train(["--set", "infer.blend=gausian"]), r"config infer\.blend", ("X",)),
    "negative epochs": Kind(_train(["--set", "train.epochs=-1"]), r"config train\.epochs", ("X",)),
    "percentiles reversed": Kind(_train(["--set", "data.clip_percentiles=[99.5,0.5]"]),
                                 r"config data\.clip_percentiles", ("X",)),
    "percentiles outside 0-100": Kind(_train(["--set", "data.clip_percentiles=[-5,150]"]),
                                      r"config data\.clip_percentiles", ("X",)),
    "overlap 1.5 given to train": Kind(_train(["--set", "infer.overlap=1.5"]), r"config infer\.overlap", ("X",)),
    "unknown loss": Kind(_train(["--set", "loss.name=dicee"]), r"loss\.name 'dicee' is unknown", ("X",)),
    "unknown key": Kind(_train(["--set", "train.epochz=3"]), r"unknown key\(s\) epochz", ("X",)),
    "binary config file": Kind(_with_file("c.yaml", bytes(range(256))), r"c\.yaml: not a text file", ("X",)),
    "config is a YAML list": Kind(_with_file("c.yaml", b"- a\n- b\n"), r"c\.yaml: a config is a table", ("X",)),
    "epochs infinite": Kind(_train(["--set", "train.epochs=.inf"]), r"config train\.epochs: expected an integer",
                            ("X",)),
    "seed beyond the backends' range": Kind(_train(["--set", "train.seed=4294967296"]), r"config train\.seed",
                                            ("X",)),
    "patch size 4096": Kind(_train(["--set", "patches.size=[4096,4096,4096]"]), r"config patches\.size", ("X",)),
    "working voxels 0.01 mm": Kind(_train(["--set", "preprocess.spacing=[0.01,0.01,0.01]"]),
                                   r"config preprocess\.spacing", ("X",)),
    "--set into a single value": Kind(_train(["--set", "train.epochs.x=1"]), r"train\.epochs is a single value",
                                      ("X",)),
    "a section that is a number": Kind(_with_file_and("c.toml", b"train = 5\n", ["--set", "train.epochs=1"]),
                                       r"\[train\] of the config is 5", ("X",)),
    "a YAML key that is a number": Kind(_with_file("c.yaml", b"1: {}\n"), r"unknown section\(s\) 1", ("X",)),
    "mask name as a channel (check)": Kind(_check_channels("flair,lesion_mask"), r"config data\.mask"),
    "a channel twice (check)": Kind(_check_channels("flair,flair"), r"config data\.channels"),
    # data: the same checks as `lesionseg check`, before a case is used
    "blank FLAIR (infer)": Kind(_infer_on(_blank), r"caseB/flair\.nii\.gz: constant image", ("P",)),
    "blank FLAIR (train)": Kind(_train_on(_blank), r"caseB/flair\.nii\.gz: constant image", ("X",)),
    "NaN in T1 (infer)": Kind(_infer_on(_nan), r"caseB/t1\.nii\.gz: contains NaN/Inf", ("P",)),
    "singular affine (infer)": Kind(_infer_on(_singular_affine), r"caseB/flair\.nii\.gz: its affine .* is singular",
                                    ("P",)),
    "header claims 4 GB (infer)": Kind(_infer_on(_header_claims_more), r"caseB/flair\.nii\.gz: (truncated|header)",
                                       ("P",)),
    "mask 1.0000001 (train)": Kind(_train_on(_almost_binary_mask), r"caseB/lesion_mask\.nii\.gz: .*1\.0000001",
                                   ("X",)),
    "case without mask (train)": Kind(_train_on(_no_mask), r"caseB/lesion_mask\.nii\.gz: missing mask", ("X",)),
    # models
    "empty model.keras": Kind(_model_bytes(lambda b: b""), r"model\.keras: cannot load model \(empty", ("P",)),
    "truncated model.keras": Kind(_model_bytes(lambda b: b[: len(b) // 2]),
                                  r"model\.keras: cannot load model \(corrupt or truncated", ("P",)),
    "run without config.yaml": Kind(_no_config, r"config\.yaml: missing", ("P",)),
    "run config.yaml empty": Kind(_run_config(""), r"run/config\.yaml: no \[data\] and no \[model\] section",
                                  ("P",)),
    "run config.yaml without [data]": Kind(_run_config("model:\n  depth: 2\n  base_filters: 4\n"),
                                           r"run/config\.yaml: no \[data\] section", ("P",)),
    # an earlier run is never lost
    "train into an earlier run": Kind(_earlier_run([]), r"X: holds an earlier run .*--overwrite", (".X.attempt",),
                                      _RUN_FILES),
    "--overwrite, new run fails": Kind(_earlier_run(["--overwrite"], lambda w: _blank(w / "data" / "caseB")),
                                       r"caseB/flair\.nii\.gz: constant image", (".X.attempt", ".X.replaced"),
                                       _RUN_FILES),
    "--resume, truncated checkpoint": Kind(_earlier_run(["--resume", "--set", "train.epochs=2"], _truncate_checkpoint),
                                           r"checkpoint: unreadable checkpoint", (), _RUN_FILES[:4]),
    "--resume, state.json a list": Kind(_earlier_run(["--resume", "--set", "train.epochs=2"], _state_json("[]")),
                                        r"checkpoint: unreadable checkpoint", (), _RUN_FILES[:4]),
    "--resume, epoch not a number": Kind(_earlier_run(["--resume", "--set", "train.epochs=2"],
                                                      _state_json('{"epoch": "six"}')),
                                         r"checkpoint: unreadable checkpoint .*epoch", (), _RUN_FILES[:4]),
    "--resume, history.csv damaged": Kind(_earlier_run(["--resume", "--set", "train.epochs=2"], _damage_history),
                                          r"history\.csv: unreadable", (), _RUN_FILES[:4]),
    "train --config inside its own --out": Kind(_config_inside_out, r"X/config\.yaml: the run writes its own",
                                                ("X/model.keras",), ("X/config.yaml",)),
    "patches into a trained run": Kind(_patches_into_run, r"X: holds a trained run", ("X/index.csv",), _RUN_FILES),
    "thick-slices on a NaN exam": Kind(_thick_slices_on(_nan), r"caseB/t1\.nii\.gz: contains NaN", ("T/caseA",)),
    # outputs: checked before any work
    "infer --out is a file": Kind(_out_is_file("infer"), r"O: output folder is an existing file", intact=("O",)),
    "train --out is a file": Kind(_out_is_file("train"), r"O: output folder is an existing file", intact=("O",)),
    "evaluate --out is a file": Kind(_out_is_file("evaluate"), r"O: output folder is an existing file",
                                     intact=("O",)),
    "patches --out is a file": Kind(_out_is_file("patches"), r"O: output folder is an existing file",
                                    intact=("O",)),
    "infer --out under a file": Kind(_out_under_file("infer"), r"O/sub: output folder lies under a file",
                                     intact=("O",)),
    "train --out under a file": Kind(_out_under_file("train"), r"O/sub: output folder lies under a file",
                                     intact=("O",)),
    "evaluate --out under a file": Kind(_out_under_file("evaluate"), r"O/sub: output folder lies under a file",
                                        intact=("O",)),
    "infer --out not writable": Kind(_infer_to(Path("/proc/lesionseg-out")), r"/proc/lesionseg-out: output folder is not writable"),
    "compare --out is a folder": Kind(_compare_into_folder, r"is a folder; --out names the file"),
    "predictions of two models": Kind(_mixed_predictions, r"P: predictions of 2 different sources .*run2", ("R",)),
    "infer into its input folder": Kind(_infer_into_input, r"output folder is inside the input folder",
                                        ("data/pred",)),
}


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""


@pytest.mark.parametrize("name", list(KINDS))
def test_bad_input_is_one_line_and_leaves_no_trace(name, base, tmp_path, capsys):
    kind = KINDS[name]
    w = tmp_path / "w"
    w.mkdir()
    argv = kind.build(base, w)
    before = {rel: _digest(w / rel) for rel in kind.intact}
    capsys.readouterr()
    code = main(["-q", *argv])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1, err
    assert len(lines) == 1 and lines[0].startswith("ERROR "), err
    assert "Traceback" not in err and "unexpected" not in err
    assert __import__("re").search(kind.message, lines[0]), lines[0]
    for rel in kind.absent:
        assert not (w / rel).exists(), f"{rel} was written"
    for rel, digest in before.items():
        assert _digest(w / rel) == digest, f"{rel} changed"
    assert not list(w.rglob(".*.tmp-*")), "temporary files left behind"


def test_catalogue_size():
    """The README states how many kinds the catalogue holds; keep them in step."""
    assert len(KINDS) >= 49


def test_mixed_predictions_are_scored_when_asked(base, tmp_path):
    w = tmp_path / "w"
    w.mkdir()
    argv = _mixed_predictions(base, w)
    assert main(["-q", *argv, "--allow-mixed"]) == 0
    assert (w / "R" / "summary.csv").is_file()


def test_temporaries_of_a_killed_run_are_removed_by_the_next_run(base, tmp_path):
    """A `kill -9` during a write leaves `.<name>.tmp-<pid>-<id>...`; the next run of the command removes it."""
    import subprocess
    import sys

    _copy(base, tmp_path, "data", "run")
    pred = tmp_path / "P"
    pred.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)  # a process that has exited
    stale = [pred / f".caseA_prob.tmp-{pid}-0123abcd.nii.gz", pred / f".caseA_record.tmp-{pid}-89abcdef.json"]
    live = pred / f".caseZ_prob.tmp-{__import__('os').getpid()}-00000000.nii.gz"  # a running writer's
    for path in (*stale, live):
        path.write_bytes(b"partial")
    assert main(["-q", "infer", "--model", str(tmp_path / "run"), "--input", str(tmp_path / "data"),
                 "--out", str(pred)]) == 0
    assert not any(p.exists() for p in stale) and live.exists()
    assert sorted(p.name for p in pred.glob("caseA*")) == [
        "caseA_pred.nii.gz", "caseA_prob.nii.gz", "caseA_record.json"]


def test_check_reports_a_huge_header_and_goes_on_with_the_other_cases(base, tmp_path, capsys):
    _copy(base, tmp_path, "data")
    _header_claims_more(tmp_path / "data" / "caseB")
    capsys.readouterr()
    assert main(["check", str(tmp_path / "data")]) == 1
    out = capsys.readouterr().out
    errors = [line for line in out.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 1 and "caseB/flair.nii.gz" in errors[0]
    assert "caseA" in out and "caseC" in out  # the table lists every case
