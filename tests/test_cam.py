"""`steadypool cam`: numbers against an independent implementation, resume, failures."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("PIL")

import torch

from steadypool._cli import main
from steadypool._tta._cam import predict
from steadypool._tta._demo import DEMO_LABELS, demo_images, run_demo
from steadypool._tta._demo_net import TinyCAMNet
from steadypool._tta._inputs import label_for, read_names
from steadypool.cam import CamConfig, CamInputError
from steadypool.cam import run as run_cam

from . import _reference_cam as reference
from .conftest import BACKENDS, cam_config

MODEL = "steadypool._tta._demo_net:TinyCAMNet"
SCALES = (1.0, 0.5, 1.5, 2.0)
TOL = 1e-4


def _labels(path: Path) -> dict[str, np.ndarray]:
    loaded: dict[str, np.ndarray] = np.load(path, allow_pickle=True).item()
    return loaded


def _config(labels: Path, out: Path, **overrides: Any) -> CamConfig:
    return cam_config(labels, out, **overrides)


def assert_match_reference(
    fmt: str, out: Path, labels_file: Path, *, pred_dir: Path | None = None
) -> None:
    """Every file in `out` equals the independent psa / irn computation (TinyCAMNet's
    weights, tolerance 1e-4) and has the format's own types; so do the predictions."""
    model = TinyCAMNet().eval()
    for name, label in _labels(labels_file).items():
        got = np.load(out / f"{name}.npy", allow_pickle=True).item()
        path = str(demo_images() / f"{name}.jpg")
        if fmt == "psa":
            want = reference.psa(model, path, label, list(SCALES), flip=True)
            assert sorted(got) == sorted(want)
            for key in want:
                assert got[key].dtype == np.float32
                np.testing.assert_allclose(got[key], want[key], atol=TOL, rtol=0)
            if pred_dir is not None:
                keys = np.array(sorted(want))
                maps = np.stack([want[k] for k in keys])
                pred = np.asarray(__import__("PIL.Image").Image.open(pred_dir / f"{name}.png"))
                assert (pred == predict(keys, maps, maps.shape[1:], 0.2)).mean() > 0.999
        else:
            want_irn = reference.irn(model, path, label, list(SCALES))
            assert set(got) == {"keys", "cam", "high_res"}
            # irn's own types, which its next steps (make_sem_seg_labels.py) rely on
            assert isinstance(got["keys"], torch.Tensor)
            assert got["keys"].dtype == torch.int64
            assert isinstance(got["cam"], torch.Tensor)
            assert (got["cam"].dtype, got["cam"].device.type) == (torch.float32, "cpu")
            assert isinstance(got["high_res"], np.ndarray)
            assert got["high_res"].dtype == np.float32
            assert torch.equal(got["keys"], want_irn["keys"])
            for part in ("cam", "high_res"):
                np.testing.assert_allclose(
                    np.asarray(got[part]), np.asarray(want_irn[part]), atol=TOL, rtol=0
                )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("devices", [("cpu",), ("cpu", "cpu")])
@pytest.mark.parametrize("fmt", ["psa", "irn"])
def test_outputs_match_an_independent_implementation(
    fmt: str,
    devices: tuple[str, ...],
    backend: str,
    labels_file: Path,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    """Every file equals the straightforward psa / irn computation (tolerance 1e-4), on
    1 and 2 devices and every backend (Ray where the ray extra is installed)."""
    if backend == "ray":
        request.getfixturevalue("ray_instance")
    summary = run_cam(
        _config(
            labels_file,
            tmp_path / "out",
            format=fmt,
            devices=devices,
            backend=backend,
            pred_dir=tmp_path / "pred",
        )
    )
    assert summary.failures == []
    assert summary.done == 4
    assert_match_reference(fmt, tmp_path / "out", labels_file, pred_dir=tmp_path / "pred")


def test_no_flip_and_other_scales(labels_file: Path, tmp_path: Path) -> None:
    """--no-flip and any number of scales (psa dropped variants beyond 12)."""
    scales = (1.0, 0.75, 0.5, 1.25, 1.5, 1.75, 2.0)
    summary = run_cam(_config(labels_file, tmp_path, scales=scales, flip=False))
    assert summary.done == 4
    label = _labels(labels_file)["chelsea"]
    want = reference.psa(
        TinyCAMNet().eval(), str(demo_images() / "chelsea.jpg"), label, list(scales), flip=False
    )
    got = np.load(tmp_path / "chelsea.npy", allow_pickle=True).item()
    for key in want:
        np.testing.assert_allclose(got[key], want[key], atol=TOL, rtol=0)


def test_resume_skips_finished_images(labels_file: Path, tmp_path: Path) -> None:
    """A second run skips what exists (unless resume is off) and leaves files as they were."""
    run_cam(_config(labels_file, tmp_path))
    before = {p.name: p.read_bytes() for p in tmp_path.glob("*.npy")}
    again = run_cam(_config(labels_file, tmp_path))
    assert (again.done, again.skipped) == (0, 4)
    assert {p.name: p.read_bytes() for p in tmp_path.glob("*.npy")} == before
    redo = run_cam(_config(labels_file, tmp_path, resume=False))
    assert (redo.done, redo.skipped) == (4, 0)


KILLABLE = """
import sys
from pathlib import Path
from steadypool.cam import CamConfig, run as run_cam
from steadypool._tta._demo import demo_images
run_cam(CamConfig(images=Path(sys.argv[1]), labels=Path(sys.argv[2]),
                  model="tests._cam_models:SlowNet", out=Path(sys.argv[3]), progress=False))
"""


def test_resume_after_a_kill_gives_identical_files(labels_file: Path, tmp_path: Path) -> None:
    """Kill a run half-way: no partial file is left, and resuming yields exactly the
    files of an uninterrupted run."""
    images = tmp_path / "images"
    images.mkdir()
    for i in range(8):  # 8 images: copies of the 4 photos
        source = sorted(demo_images().glob("*.jpg"))[i % 4]
        shutil.copy(source, images / f"{source.stem}{i // 4}.jpg")
    labels = {p.stem: _labels(labels_file)[p.stem[:-1]] for p in images.glob("*.jpg")}
    np.save(tmp_path / "labels.npy", labels)  # type: ignore[arg-type]
    args = [str(images), str(tmp_path / "labels.npy")]
    root = Path(__file__).resolve().parent.parent
    run = [sys.executable, "-c", KILLABLE]
    subprocess.run([*run, *args, str(tmp_path / "clean")], cwd=root, check=True, timeout=300)
    killed = subprocess.Popen([*run, *args, str(tmp_path / "resumed")], cwd=root)
    deadline = time.monotonic() + 120
    while not list((tmp_path / "resumed").glob("*.npy")):
        assert time.monotonic() < deadline
        assert killed.poll() is None
        time.sleep(0.01)
    killed.send_signal(signal.SIGKILL)
    killed.wait(30)
    partial = list((tmp_path / "resumed").glob("*.npy"))
    assert 0 < len(partial) < 8, "the kill came too late to test anything"
    for path in partial:  # whatever exists is whole
        np.load(path, allow_pickle=True).item()
    subprocess.run([*run, *args, str(tmp_path / "resumed")], cwd=root, check=True, timeout=300)
    clean = {p.name: p.read_bytes() for p in (tmp_path / "clean").glob("*.npy")}
    resumed = {p.name: p.read_bytes() for p in (tmp_path / "resumed").glob("*.npy")}
    assert len(clean) == 8
    assert resumed == clean
    assert not list((tmp_path / "resumed").glob(".*.tmp"))


def test_bad_images_and_labels_are_listed_and_the_rest_completes(
    labels_file: Path, tmp_path: Path
) -> None:
    """A missing image, a corrupt one and one without a label fail alone; exit code 1."""
    images = tmp_path / "images"
    shutil.copytree(demo_images(), images)
    (images / "broken.jpg").write_bytes(b"not a jpeg at all")
    labels = _labels(labels_file) | {
        "broken": np.eye(20, dtype=np.float32)[3],
        "ghost": np.eye(20, dtype=np.float32)[3],
    }
    np.save(tmp_path / "labels.npy", labels)  # type: ignore[arg-type]
    (images / "unlabelled.jpg").write_bytes((images / "chelsea.jpg").read_bytes())
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(["chelsea", "ghost", "broken", "unlabelled", "rocket"]))
    code = main(
        [
            "cam",
            "--images",
            str(images),
            "--list",
            str(listing),
            "--labels",
            str(tmp_path / "labels.npy"),
            "--model",
            MODEL,
            "--out",
            str(tmp_path / "out"),
            "--quiet",
        ]
    )
    assert code == 1
    assert sorted(p.stem for p in (tmp_path / "out").glob("*.npy")) == ["chelsea", "rocket"]
    summary = run_cam(
        _config(
            tmp_path / "labels.npy",
            tmp_path / "out",
            images=images,
            list_file=listing,
            resume=False,
        )
    )
    reasons = dict(summary.failures)
    assert set(reasons) == {"ghost", "broken", "unlabelled"}
    assert "FileNotFoundError" in reasons["ghost"]
    assert "no label for 'unlabelled'" in reasons["unlabelled"]
    assert "UnidentifiedImageError" in reasons["broken"]


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"model": "tests._cam_models:NoCam"}, "has no forward_cam"),
        ({"model": "no_such_module:Net"}, "cannot load the model"),
        ({"model": "just_a_name"}, "must be MODULE:ATTR"),
        ({"model": "tests._cam_models:other_width", "weights": "WEIGHTS"}, "do not fit"),
        ({"list_file": "EMPTY"}, "no images to process"),
        ({"out": "A_FILE"}, "cannot write to"),
        ({"format": "voc"}, "--format must be one of psa, irn, seam, puzzlecam, toco"),
        ({"scales": (1.0, -0.5)}, "--scales must be positive"),
        ({"devices": ("cuda:5",)}, "cuda:5 is not available"),
    ],
)
def test_bad_runs_fail_before_any_work(
    overrides: dict[str, Any], match: str, labels_file: Path, tmp_path: Path
) -> None:
    """What makes the whole run impossible is a clear error before work starts."""
    if overrides.get("weights") == "WEIGHTS":
        torch.save(TinyCAMNet().state_dict(), tmp_path / "w.pt")
        overrides["weights"] = tmp_path / "w.pt"
    if overrides.get("list_file") == "EMPTY":
        (tmp_path / "empty.txt").write_text("\n")
        overrides["list_file"] = tmp_path / "empty.txt"
    if overrides.get("out") == "A_FILE":
        (tmp_path / "file").write_text("x")
        overrides["out"] = tmp_path / "file"
    overrides.setdefault("out", tmp_path / "out")
    with pytest.raises((CamInputError, ValueError), match=match):
        run_cam(_config(labels_file, **overrides))
    assert not list((tmp_path / "out").glob("*.npy")) if (tmp_path / "out").exists() else True


def test_weights_are_loaded(labels_file: Path, tmp_path: Path) -> None:
    """--weights replaces the model's parameters (here: those of another seed)."""
    torch.save(TinyCAMNet(seed=1).state_dict(), tmp_path / "w.pt")
    run_cam(_config(labels_file, tmp_path / "out", weights=tmp_path / "w.pt"))
    want = reference.psa(
        TinyCAMNet(seed=1).eval(),
        str(demo_images() / "rocket.jpg"),
        _labels(labels_file)["rocket"],
        list(SCALES),
        flip=True,
    )
    got = np.load(tmp_path / "out" / "rocket.npy", allow_pickle=True).item()
    np.testing.assert_allclose(got[0], want[0], atol=TOL, rtol=0)


def test_names_and_labels_in_psa_and_irn_styles(tmp_path: Path) -> None:
    """psa list lines and bare names; psa string keys and irn integer keys."""
    listing = tmp_path / "train.txt"
    listing.write_text(
        "/JPEGImages/2007_000032.jpg /SegmentationClassAug/2007_000032.png\n2007_000039\n\n"
    )
    assert read_names(tmp_path, listing) == ["2007_000032", "2007_000039"]
    vector = np.eye(20, dtype=np.float32)[5]
    assert label_for({2007000032: vector}, "2007_000032", 20)[5] == 1.0
    assert label_for({"2007_000032": vector}, "2007_000032", 20)[5] == 1.0
    with pytest.raises(KeyError, match="no label"):
        label_for({}, "x", 20)


def test_list_names_keep_spaces_and_dots(labels_file: Path, tmp_path: Path) -> None:
    """--list names are taken as written (only a known image suffix and folders are
    dropped): 'with space' and 'two.dots.v2' are found and run, not cut to 'with' and
    'two.dots'."""
    images = tmp_path / "images"
    images.mkdir()
    chelsea = demo_images() / "chelsea.jpg"
    for name in ("with space", "two.dots.v2", "plain"):
        shutil.copy(chelsea, images / f"{name}.jpg")
    listing = tmp_path / "list.txt"
    listing.write_text("with space\ntwo.dots.v2\nJPEGImages/plain.jpg\n")
    assert read_names(images, listing) == ["with space", "two.dots.v2", "plain"]
    vector = _labels(labels_file)["chelsea"]
    labels = tmp_path / "labels.npy"
    np.save(labels, {"with space": vector, "two.dots.v2": vector, "plain": vector})  # type: ignore[arg-type]
    summary = run_cam(
        _config(labels, tmp_path / "out", images=images, list_file=listing, devices=("cpu",))
    )
    assert summary.failures == []
    assert sorted(p.name for p in (tmp_path / "out").glob("*.npy")) == [
        "plain.npy",
        "two.dots.v2.npy",
        "with space.npy",
    ]


def test_demo_writes_cams_predictions_and_overlays(tmp_path: Path) -> None:
    """`steadypool demo` runs end to end on the bundled photos."""
    summary = run_demo(tmp_path, workers=2, progress=False)
    assert summary.done == 4
    assert not summary.failures
    for name, classes in DEMO_LABELS.items():
        cams = np.load(tmp_path / "cams" / f"{name}.npy", allow_pickle=True).item()
        assert sorted(cams) == sorted(classes)
        assert (tmp_path / "overlay" / f"{name}.png").stat().st_size > 1000
        assert (tmp_path / "pred" / f"{name}.png").exists()
    assert os.path.exists(demo_images() / "LICENSES.txt")


def _cli_cam(labels: Path, out: Path, model: str) -> list[str]:
    return [
        "cam",
        "--images",
        str(demo_images()),
        "--labels",
        str(labels),
        "--model",
        model,
        "--out",
        str(out),
        "--devices",
        "cpu",
        "--quiet",
    ]


def test_a_psa_style_network_whose_train_returns_none_runs(
    labels_file: Path, tmp_path: Path
) -> None:
    """psa's Net overrides train() and returns None (so eval() returns None): the CLI
    keeps the model instead of dying on it."""
    assert main(_cli_cam(labels_file, tmp_path, "tests._cam_models:PsaStyleNet")) == 0
    assert len(list(tmp_path.glob("*.npy"))) == 4


def test_the_installed_command_finds_a_model_module_in_the_current_folder(
    labels_file: Path, tmp_path: Path
) -> None:
    """`steadypool cam --model mynet:Net` with mynet.py in the current folder works
    through the installed console script, not only through python -m."""
    (tmp_path / "mynet.py").write_text("from steadypool._tta._demo_net import TinyCAMNet as Net\n")
    command = Path(sys.executable).with_name("steadypool")
    done = subprocess.run(
        [str(command), *_cli_cam(labels_file, tmp_path / "out", "mynet:Net")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert len(list((tmp_path / "out").glob("*.npy"))) == 4


@pytest.mark.parametrize(
    ("source", "attr", "match"),
    [
        ("def broken(:\n", "Net", "SyntaxError"),
        ("raise RuntimeError('no GPU here')\n", "Net", "RuntimeError: no GPU here"),
        ("NOT_A_CLASS = 3\n", "NOT_A_CLASS", "names a int, not a class or factory"),
    ],
)
def test_a_model_that_cannot_be_loaded_is_one_clear_error(
    labels_file: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    source: str,
    attr: str,
    match: str,
) -> None:
    """A model module with a syntax error, one that raises on import, or a name that is
    not a class: exit 2 with one message before any work, no traceback, no output."""
    module = f"badnet_{abs(hash(source)) % 10**8}"
    (tmp_path / f"{module}.py").write_text(source)
    sys.path.insert(0, str(tmp_path))
    try:
        assert main(_cli_cam(labels_file, tmp_path / "out", f"{module}:{attr}")) == 2
    finally:
        sys.path.remove(str(tmp_path))
    err = capsys.readouterr().err
    assert match in err
    assert "Traceback" not in err


@pytest.mark.parametrize("fmt", ["psa", "irn"])
def test_an_irn_style_network_that_merges_the_flip_pair_runs_unmodified(
    fmt: str, labels_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A network defined like irn's CAM (no forward_cam; forward takes [img, flip(img)]
    and returns the merged map) gives the same files as the reference computed from the
    same weights through forward_cam; --no-flip is refused for it (all through the CLI)."""
    model = "tests._cam_models:IrnStyleCAM"
    assert main([*_cli_cam(labels_file, tmp_path / "out", model), "--format", fmt]) == 0
    assert_match_reference(fmt, tmp_path / "out", labels_file)
    assert main([*_cli_cam(labels_file, tmp_path / "nf", model), "--no-flip"]) == 2
    assert "leave out --no-flip" in capsys.readouterr().err
    assert not (tmp_path / "nf").exists()


@pytest.mark.parametrize("layout", ["plain", "state_dict", "model", "dataparallel"])
def test_checkpoints_as_people_save_them_load(layout: str, tmp_path: Path) -> None:
    """A state dict, one under "state_dict" or "model" (beside an epoch), and
    DataParallel's "module." keys all load into the model."""
    from steadypool._tta._inputs import load_model

    trained = TinyCAMNet()
    with torch.no_grad():
        for parameter in trained.parameters():
            parameter.add_(1.0)  # differs from the seeded weights
    state: dict[str, Any] = dict(trained.state_dict())
    saved: dict[str, Any] = {
        "plain": state,
        "state_dict": {"state_dict": state, "epoch": 3},
        "model": {"model": state, "optimizer": {}},
        "dataparallel": {f"module.{k}": v for k, v in state.items()},
    }[layout]
    path = tmp_path / "weights.pth"
    torch.save(saved, path)
    loaded = load_model(MODEL, path)
    for key, value in trained.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_the_demo_network_has_a_public_name(labels_file: Path, tmp_path: Path) -> None:
    """`--model demo` names the built-in network (no private module path needed)."""
    assert main(_cli_cam(labels_file, tmp_path, "demo")) == 0
    assert len(list(tmp_path.glob("*.npy"))) == 4
