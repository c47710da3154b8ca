"""`steadypool eval` / `steadypool.cam.evaluate`: the seed mIoU against a hand-computed
confusion and an independent per-threshold computation, every layout read back
(ours and the code bases' own), the absent-class rules, and the refusals."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("PIL")

from PIL import Image

from steadypool._cli import main
from steadypool.cam import EvalError, EvalResult, demo_images, evaluate
from steadypool.cam import run as run_cam

from . import _reference_cam as reference
from . import _reference_eval as ref_eval
from .conftest import cam_config
from .test_cam_formats import NETWORKS

NAMES = ("astronaut", "chelsea", "coffee", "rocket")
MODELS = {"psa": "demo", "irn": "demo", **{f: NETWORKS[f][0] for f in NETWORKS}}


def _palette_png(array: np.ndarray, path: Path, *, grey: bool = False) -> None:
    """Save class indices as VOC does (palette PNG) or as SegmentationClassAug (grey)."""
    image = Image.fromarray(array.astype(np.uint8), mode="L" if grey else None)
    if not grey:
        image = image.convert("P")
        image.putpalette([v for i in range(256) for v in ((i * 37) % 256, (i * 91) % 256, i)])
    image.save(path)


@pytest.fixture(scope="module")
def gt_dir(tmp_path_factory: pytest.TempPathFactory, labels_file: Path) -> Path:
    """VOC-like GT for the demo photos: each photo's classes in blobs, background
    elsewhere, a 255 border, odd sizes; half palette, half grey PNGs."""
    folder = tmp_path_factory.mktemp("gt")
    labels: dict[str, np.ndarray] = np.load(labels_file, allow_pickle=True).item()
    rng = np.random.default_rng(7)
    for i, name in enumerate(NAMES):
        with Image.open(demo_images() / f"{name}.jpg") as photo:
            width, height = photo.size
        gt = np.zeros((height, width), np.uint8)
        for k in np.flatnonzero(labels[name]):
            y, x = rng.integers(0, height - 60), rng.integers(0, width - 80)
            gt[y : y + 60, x : x + 80] = k + 1
        gt[:3], gt[-3:], gt[:, :3], gt[:, -3:] = 255, 255, 255, 255
        gt[height // 2, :] = (
            15 if name == "rocket" else gt[height // 2, :]
        )  # a class never predicted
        _palette_png(gt, folder / f"{name}.png", grey=i % 2 == 1)
    return folder


@pytest.fixture(scope="module")
def cam_dirs(tmp_path_factory: pytest.TempPathFactory, labels_file: Path) -> dict[str, Path]:
    """The demo photos' CAM files in each of the five formats, written by the runner."""
    out = {}
    for fmt, model in MODELS.items():
        folder = tmp_path_factory.mktemp(f"cams-{fmt}")
        summary = run_cam(cam_config(labels_file, folder, model=model, format=fmt, cpu_workers=2))
        assert summary.done == 4
        out[fmt] = folder
    return out


def test_a_hand_computed_confusion(tmp_path: Path) -> None:
    """Two tiny images, two thresholds, every tie rule: background wins a tie at
    float32(t), the lower class wins a foreground tie, GT 255 is left out; the counts
    are written out by hand."""
    cams, gt = tmp_path / "cams", tmp_path / "gt"
    cams.mkdir()
    gt.mkdir()
    # image a: classes 1 and 4 (keys 0 and 3); maps 2 x 3
    a1 = np.array([[0.9, 0.2, 0.5], [0.3, 0.0, 0.7]], np.float32)
    a4 = np.array([[0.1, 0.6, 0.5], [0.3, 0.0, 0.1]], np.float32)
    np.save(cams / "a.npy", {0: a1, 3: a4})  # type: ignore[arg-type]
    _palette_png(np.array([[1, 4, 1], [255, 0, 4]]), gt / "a.png")
    # image b: one class whose map is 0 everywhere: every pixel is background
    np.save(cams / "b.npy", {0: np.zeros((1, 2), np.float32)})  # type: ignore[arg-type]
    _palette_png(np.array([[0, 2]]), gt / "b.png")
    # image c: psa's file for an image without classes, {}: background
    np.save(cams / "c.npy", {})  # type: ignore[arg-type]
    _palette_png(np.array([[3]]), gt / "c.png")
    result = evaluate(cams, gt, thresholds="0.3,0.5", workers=2)
    assert result.thresholds == (0.3, 0.5)
    # a at t=0.3: [[1, 4, 1], [bg(0.3 tie), bg, 1]];  at t=0.5: [[1, 4, bg(0.5 tie)], [bg, bg, 1]]
    # b (class 1 map all 0): background at both
    want = np.zeros((2, 21, 21), np.int64)
    for i, pred_a in enumerate(([[1, 4, 1], [0, 0, 1]], [[1, 4, 0], [0, 0, 1]])):
        for g, p in zip([1, 4, 1, 0, 4], np.array(pred_a).ravel()[[0, 1, 2, 4, 5]], strict=True):
            want[i, g, p] += 1
        want[i, 0, 0] += 1  # b: GT 0, background
        want[i, 2, 0] += 1  # b: GT 2, background
        want[i, 3, 0] += 1  # c: GT 3, background
    np.testing.assert_array_equal(result.confusions, want)
    assert result.confusions.dtype == np.int64
    # irn's rule at t=0.3: classes 0-4 are in GT or prediction, 5-20 are left out
    iou = result.iou(0)
    np.testing.assert_allclose(iou[:5], [2 / 4, 2 / 3, 0.0, 0.0, 0.5])
    assert np.isnan(iou[5:]).all()
    assert result.miou[0] == pytest.approx(np.mean([2 / 4, 2 / 3, 0.0, 0.0, 0.5]))


@pytest.mark.timeout(300)
@pytest.mark.parametrize("absent", ["irn", "seam", "toco"])
@pytest.mark.parametrize("fmt", sorted(MODELS))
def test_each_layout_read_back_equals_the_per_threshold_computation(
    fmt: str, absent: str, cam_dirs: dict[str, Path], gt_dir: Path
) -> None:
    """For every format's files, the one-pass sweep gives, at each threshold, the
    confusion and mIoU of the code base's own per-threshold evaluation."""
    result = evaluate(cam_dirs[fmt], gt_dir, thresholds="0:1:0.05", absent=absent, workers=2)
    assert len(result.thresholds) == 20
    for i, t in enumerate(result.thresholds):
        want = ref_eval.confusion(cam_dirs[fmt], gt_dir, NAMES, t)
        np.testing.assert_array_equal(result.confusions[i], want, err_msg=f"t={t}")
        assert result.miou[i] == pytest.approx(ref_eval.miou(want, absent), abs=1e-12)
    assert result.layout == {"seam": "psa"}.get(fmt, fmt)


def test_files_written_by_the_code_bases_themselves_are_read(
    tmp_path: Path, gt_dir: Path, labels_file: Path
) -> None:
    """The references' own outputs (each code base's file, as its own code saves it:
    irn's torch keys, PuzzleCAM's padded keys, ToCo's numpy keys) evaluate as the
    per-threshold computation says."""
    labels: dict[str, np.ndarray] = np.load(labels_file, allow_pickle=True).item()
    scales = [1.0, 0.5]
    writers: dict[str, Any] = {
        "irn": lambda net, p, lab: reference.irn(net, p, lab, scales),
        "puzzlecam": lambda net, p, lab: reference.puzzlecam(net, p, lab, scales),
        "toco": lambda net, p, lab: reference.toco(net, p, lab, scales),
        "seam": lambda net, p, lab: reference.seam(net, p, lab, scales, True),
    }
    from steadypool._tta._demo_net import TinyCAMNet

    for fmt, write in writers.items():
        net = (NETWORKS[fmt][1] if fmt in NETWORKS else TinyCAMNet)().eval()
        folder = tmp_path / fmt
        folder.mkdir()
        for name in NAMES:
            saved = write(net, str(demo_images() / f"{name}.jpg"), labels[name])
            np.save(folder / f"{name}.npy", saved)
        result = evaluate(folder, gt_dir, format=fmt, thresholds=0.25, workers=1)
        want = ref_eval.confusion(folder, gt_dir, NAMES, 0.25)
        np.testing.assert_array_equal(result.confusions[0], want)


def test_gt_as_palette_and_as_grey_read_the_same(tmp_path: Path, cam_dirs: dict[str, Path]) -> None:
    """VOC's palette PNGs (indices) and SegmentationClassAug's grey PNGs give one result."""
    gt = np.full((213, 320), 255, np.uint8)
    gt[10:200, 10:300] = 0
    gt[50:150, 60:200] = 8
    for kind in ("palette", "grey"):
        folder = tmp_path / kind
        folder.mkdir()
        _palette_png(gt, folder / "chelsea.png", grey=kind == "grey")
        listing = tmp_path / "list.txt"
        listing.write_text("chelsea\n")
    results = [
        evaluate(cam_dirs["psa"], tmp_path / kind, list_file=tmp_path / "list.txt", thresholds=0.2)
        for kind in ("palette", "grey")
    ]
    np.testing.assert_array_equal(results[0].confusions, results[1].confusions)
    assert results[0].confusions[0].sum() == (gt != 255).sum()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--format", "irn"], "is a psa/SEAM file"),
        (["--format", "toco"], "not a ToCo file as --format says"),
        (["--thresholds", "0.5:0.1:0.01"], "gives no threshold (the grid is empty)"),
        (["--thresholds", "0:1:0"], "the step must be positive"),
        (["--thresholds", "-0.1"], "must be finite and >= 0"),
        (["--thresholds", "abc"], "is not a number"),
        (
            ["--gt", "MISSING_GT"],
            "lacks the GT PNGs of 1 of the 4 listed images (first: rocket.png)",
        ),
        (
            ["--list", "LIST_EXTRA"],
            "lacks the CAM files of 1 of the 5 listed images (first: ghost.npy)",
        ),
        (["--cams", "nowhere"], "--cams nowhere is not a directory"),
        (["--workers", "0"], "--workers must be at least 1"),
    ],
)
def test_refusals_are_one_line_and_exit_2(
    args: list[str],
    message: str,
    cam_dirs: dict[str, Path],
    gt_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A folder not in --format's layout, a bad or empty grid, GT missing for a listed
    image, a missing cam file: exit 2 with one error line, no traceback."""
    if "MISSING_GT" in args:
        partial = tmp_path / "gt"
        partial.mkdir()
        for name in NAMES[:3]:
            (partial / f"{name}.png").write_bytes((gt_dir / f"{name}.png").read_bytes())
        args = [str(partial) if a == "MISSING_GT" else a for a in args]
    if "LIST_EXTRA" in args:
        (tmp_path / "list.txt").write_text("\n".join([*NAMES, "ghost"]) + "\n")
        args = [str(tmp_path / "list.txt") if a == "LIST_EXTRA" else a for a in args]
    base = {"--cams": str(cam_dirs["psa"]), "--gt": str(gt_dir)}
    for i in range(0, len(args) - 1, 2):
        if args[i] in base:
            base[args[i]] = args[i + 1]
    rest: list[str] = []
    for i in range(0, len(args), 2):
        if args[i] not in base:
            rest += args[i : i + 2]
    code = main(["eval", *(x for kv in base.items() for x in kv), *rest])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("steadypool eval: error: ")
    assert message in err
    assert len(err.strip().splitlines()) == 1


def test_the_command_prints_the_table_and_writes_json_and_a_plot(
    cam_dirs: dict[str, Path], gt_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`steadypool eval` prints the best threshold and a VOC class table, says which
    absent-class rule it used, and writes the JSON and a PNG plot."""
    pytest.importorskip("matplotlib")
    args = [
        "eval",
        "--cams",
        str(cam_dirs["toco"]),
        "--gt",
        str(gt_dir),
        "--thresholds",
        "0:0.6:0.05",
    ]
    args += ["--json", str(tmp_path / "r.json"), "--plot", str(tmp_path / "r.png")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "best threshold" in out
    assert "absent classes: irn" in out
    assert "tvmonitor" in out
    assert "background" in out
    data = json.loads((tmp_path / "r.json").read_text())
    assert len(data["thresholds"]) == len(data["miou"]) == 12
    assert data["best"]["threshold"] in data["thresholds"]
    assert set(data["best"]["iou"]) >= {"background", "person"}
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(tmp_path / "r.png") as plot:
        assert plot.size[0] >= 600


def test_cam_with_eval_gt_evaluates_after_the_run(
    labels_file: Path, gt_dir: Path, tmp_path: Path
) -> None:
    """`steadypool cam --eval-gt DIR` runs the same evaluation over what it wrote."""
    config = cam_config(
        labels_file, tmp_path / "out", format="irn", eval_gt=gt_dir, eval_thresholds="0.15"
    )
    summary = run_cam(config)
    assert isinstance(summary.evaluation, EvalResult)
    alone = evaluate(tmp_path / "out", gt_dir, thresholds=0.15)
    np.testing.assert_array_equal(summary.evaluation.confusions, alone.confusions)
    assert "threshold 0.15: mIoU" in str(summary)


def test_thresholds_grid_matches_seams_values() -> None:
    """0:0.6:0.01 is SEAM's i / 100.0 for i < 60, as the same doubles."""
    from steadypool._tta._eval import parse_thresholds

    grid = parse_thresholds("0:0.6:0.01")
    assert grid == tuple(i / 100.0 for i in range(60))
    assert parse_thresholds("0.05:0.8:0.05") == tuple(np.arange(0.05, 0.80, 0.05).round(10))
    with pytest.raises(EvalError, match="empty"):
        parse_thresholds("")


@pytest.mark.timeout(120)
def test_the_one_pass_sweep_equals_each_threshold_on_random_ties() -> None:
    """Random maps whose values sit exactly on the thresholds (ties everywhere), random
    GT with 255: the sweep's confusion at every threshold equals the per-threshold
    argmax of irn's eval_cam.py and of SEAM's evaluation.py."""
    import tempfile

    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    grid = (0.0, 0.1, 0.2, 0.3, 0.5)
    values = np.array([*grid, 0.15, 0.7, 1.0], np.float32)

    @settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(seed=st.integers(0, 2**31 - 1), classes=st.integers(0, 3))
    def check(seed: int, classes: int) -> None:
        rng = np.random.default_rng(seed)
        keys = np.sort(rng.choice(20, size=classes, replace=False)).astype(np.int64)
        maps = values[rng.integers(0, len(values), size=(classes, 5, 7))]
        gt = rng.choice(np.array([0, 255, *(keys + 1), 9]), size=(5, 7)).astype(np.uint8)
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            for sub in ("toco", "psa", "gt"):
                (root / sub).mkdir()
            toco: Any = {"keys": keys, "high_res": maps}
            psa: Any = {int(k): m for k, m in zip(keys, maps, strict=True)}
            np.save(root / "toco" / "x.npy", toco)
            np.save(root / "psa" / "x.npy", psa)
            _palette_png(gt, root / "gt" / "x.png")
            for layout in ("toco", "psa") if classes else ("toco",):  # SEAM's eval needs a map
                result = evaluate(root / layout, root / "gt", thresholds=grid, workers=1)
                for i, t in enumerate(grid):
                    want = ref_eval.confusion(root / layout, root / "gt", ["x"], t)
                    np.testing.assert_array_equal(result.confusions[i], want)

    check()
