"""`steadypool cam --format seam|puzzlecam|toco`: each against an independent
re-implementation of its code base's published CAM step, with a network defined the
way that code base defines its own (and the README's adapter); the recipe table; and
the runner's edges (run record, image names, 16-bit photos, tiny images)."""

from __future__ import annotations

import dataclasses
import logging
import shutil
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("PIL")

import torch
from PIL import Image

from steadypool._cli import main
from steadypool._tta._recipes import RECIPES
from steadypool.cam import CamInputError, demo_images
from steadypool.cam import run as run_cam

from . import _cam_models as models
from . import _reference_cam as reference
from .conftest import cam_config

if TYPE_CHECKING:
    from pathlib import Path

SCALES = (1.0, 0.5, 1.5, 2.0)
TOL = 1e-4
# format -> (the adapter a user names with --model, the network as its code base defines it)
NETWORKS: dict[str, tuple[str, Any]] = {
    "seam": ("tests._cam_models:SeamCam", models.SeamStyleNet),
    "puzzlecam": ("tests._cam_models:PuzzleCam", models.PuzzleStyleClassifier),
    "toco": ("tests._cam_models:TocoCam", models.TocoStyleNetwork),
}
WORST: dict[str, float] = {}  # largest difference seen per format (printed with -s)


def _labels(path: Path) -> dict[str, np.ndarray]:
    loaded: dict[str, np.ndarray] = np.load(path, allow_pickle=True).item()
    return loaded


def _diff(fmt: str, got: Any, want: Any) -> None:
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape
    worst = float(np.abs(got - want).max()) if got.size else 0.0
    WORST[fmt] = max(WORST.get(fmt, 0.0), worst)
    assert worst <= TOL


def assert_match_reference(
    fmt: str, out: Path, labels_file: Path, scales: tuple[float, ...] = SCALES, flip: bool = True
) -> None:
    """Every file in `out` equals the reference computation of `fmt` with the network
    as its code base defines it, keys, types and layout included."""
    net = NETWORKS[fmt][1]().eval()
    for name, label in _labels(labels_file).items():
        got = np.load(out / f"{name}.npy", allow_pickle=True).item()
        path = str(demo_images() / f"{name}.jpg")
        want: Any
        if fmt == "seam":
            want = reference.seam(net, path, label, list(scales), flip)
            assert sorted(got) == sorted(want)
            for key in want:
                assert got[key].dtype == np.float32
                _diff(fmt, got[key], want[key])
        elif fmt == "puzzlecam":
            want = reference.puzzlecam(net, path, label, list(scales))
            assert set(got) == {"keys", "cam", "hr_cam"}
            assert type(got["keys"]) is np.ndarray
            assert got["keys"].dtype == want["keys"].dtype == np.int64
            np.testing.assert_array_equal(got["keys"], want["keys"])
            assert got["keys"][0] == 0  # already shifted: background first
            assert isinstance(got["cam"], torch.Tensor)
            assert (got["cam"].dtype, got["cam"].device.type) == (torch.float32, "cpu")
            assert type(got["hr_cam"]) is np.ndarray
            assert got["hr_cam"].dtype == np.float32
            _diff(fmt, got["cam"], want["cam"])
            _diff(fmt, got["hr_cam"], want["hr_cam"])
        else:
            want = reference.toco(net, path, label, list(scales))
            assert set(got) == {"keys", "high_res"}
            assert type(got["keys"]) is np.ndarray
            assert got["keys"].dtype == want["keys"].dtype == np.int64
            np.testing.assert_array_equal(got["keys"], want["keys"])
            assert type(got["high_res"]) is np.ndarray
            assert got["high_res"].dtype == np.float32
            _diff(fmt, got["high_res"], want["high_res"])


@pytest.mark.timeout(300)
@pytest.mark.parametrize("backend", ["threads", "processes"])
@pytest.mark.parametrize("devices", [("cpu",), ("cpu", "cpu")])
@pytest.mark.parametrize("fmt", sorted(NETWORKS))
def test_format_matches_an_independent_implementation(
    fmt: str, devices: tuple[str, ...], backend: str, labels_file: Path, tmp_path: Path
) -> None:
    """Each new format equals the code base's published computation (tolerance 1e-4;
    keys, dtypes and layout exact), on 1 and 2 devices, threads and processes, with the
    network's adapter named by --model."""
    config = cam_config(
        labels_file,
        tmp_path / "out",
        model=NETWORKS[fmt][0],
        format=fmt,
        devices=devices,
        backend=backend,
    )
    summary = run_cam(config)
    assert summary.failures == []
    assert summary.done == 4
    assert_match_reference(fmt, tmp_path / "out", labels_file)


def test_seam_without_flips_and_its_negative_minimum(labels_file: Path, tmp_path: Path) -> None:
    """SEAM with --no-flip and other scales still matches; its normalisation is kept as
    published: pixels at a class's minimum come out negative, not 0."""
    scales = (0.75, 1.25)
    config = cam_config(
        labels_file, tmp_path, model=NETWORKS["seam"][0], format="seam", scales=scales, flip=False
    )
    assert run_cam(config).done == 4
    assert_match_reference("seam", tmp_path, labels_file, scales=scales, flip=False)
    maps = np.load(tmp_path / "chelsea.npy", allow_pickle=True).item()
    assert min(float(m.min()) for m in maps.values()) < -0.01


def test_toco_runs_scale_one_first_whatever_the_list(labels_file: Path, tmp_path: Path) -> None:
    """ToCo's multi_scale_cam2 always runs 1.0 (first, once): a list without 1.0 gives
    the reference's maps, which include it."""
    scales = (0.5, 1.5)
    config = cam_config(
        labels_file, tmp_path, model=NETWORKS["toco"][0], format="toco", scales=scales
    )
    assert run_cam(config).done == 4
    assert_match_reference("toco", tmp_path, labels_file, scales=scales)


@pytest.mark.parametrize("fmt", ["puzzlecam", "toco"])
def test_a_network_that_merges_the_flip_itself_is_refused_where_it_cannot_be_exact(
    fmt: str, labels_file: Path, tmp_path: Path
) -> None:
    """PuzzleCAM's ReLU per variant and ToCo's max merge need each variant's CAM: an
    irn-style network (forward merges the pair by summing) is refused before work."""
    config = cam_config(
        labels_file, tmp_path / "o", model="tests._cam_models:IrnStyleCAM", format=fmt
    )
    with pytest.raises(CamInputError, match="needs each variant's CAM"):
        run_cam(config)
    assert not (tmp_path / "o").exists()


def test_recipes_are_frozen_data_naming_their_commit() -> None:
    """A format is a frozen dataclass; each names the code and commit it reproduces."""
    assert sorted(RECIPES) == ["irn", "psa", "puzzlecam", "seam", "toco"]
    for recipe in RECIPES.values():
        assert dataclasses.is_dataclass(recipe)
        with pytest.raises(dataclasses.FrozenInstanceError):
            recipe.name = "x"  # type: ignore[misc]
        assert any(ch.isdigit() for ch in recipe.source.split(",")[0])


# --- the runner's holes (issue 18) --------------------------------------------------


def test_a_rerun_with_other_parameters_is_refused_naming_the_change(
    labels_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The folder records how its maps were made; a resumed run with other scales,
    flips or labels exits 2 naming each change; --no-resume redoes every image."""
    out = tmp_path / "out"
    base = ["cam", "--images", str(demo_images()), "--model", "demo", "--quiet"]
    base += ["--labels", str(labels_file), "--out", str(out)]
    assert main(base) == 0
    assert (out / ".steadypool-cam.json").is_file()
    capsys.readouterr()
    assert main([*base, "--scales", "1.0", "--no-flip"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "--scales (1,0.5,1.5,2 -> 1)" in err
    assert "--no-flip (True -> False)" in err
    assert "--no-resume" in err
    other = tmp_path / "labels.npy"
    labels = _labels(labels_file)
    labels["chelsea"] = labels["chelsea"] * 0.5
    np.save(other, labels)  # type: ignore[arg-type]
    assert main([*base[:-4], "--labels", str(other), "--out", str(out)]) == 2
    assert "--labels (" in capsys.readouterr().err
    assert main([*base, "--scales", "1.0", "--no-flip", "--no-resume"]) == 0
    assert main([*base, "--scales", "1.0", "--no-flip"]) == 0  # same as recorded: resumes
    assert "4 skipped" in capsys.readouterr().out


def test_image_names_of_any_suffix_case_and_ambiguous_stems(
    labels_file: Path, tmp_path: Path
) -> None:
    """``mixed.Jpg`` is found; ``dup.jpg`` beside ``dup.png`` is refused before work,
    naming both files."""
    images = tmp_path / "images"
    images.mkdir()
    chelsea = demo_images() / "chelsea.jpg"
    shutil.copy(chelsea, images / "mixed.Jpg")
    vector = _labels(labels_file)["chelsea"]
    labels = tmp_path / "labels.npy"
    np.save(labels, {"mixed": vector, "dup": vector})  # type: ignore[arg-type]
    summary = run_cam(cam_config(labels, tmp_path / "out", images=images))
    assert (summary.done, summary.failures) == (1, [])
    shutil.copy(chelsea, images / "dup.jpg")
    Image.open(chelsea).save(images / "dup.png")
    with pytest.raises(CamInputError, match=r"dup: dup\.jpg, dup\.png"):
        run_cam(cam_config(labels, tmp_path / "out2", images=images))
    assert not (tmp_path / "out2").exists()


def test_a_16_bit_png_is_kept_and_warned_about_once(
    labels_file: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A 16-bit PNG runs (converted as psa and irn do) with one warning per run."""
    images = tmp_path / "images"
    images.mkdir()
    grey = (
        np.asarray(Image.open(demo_images() / "chelsea.jpg").convert("L")).astype(np.uint16)
    ) * 200
    for name in ("deep1", "deep2"):
        Image.fromarray(grey).save(images / f"{name}.png")
    labels = tmp_path / "labels.npy"
    vector = _labels(labels_file)["chelsea"]
    np.save(labels, {"deep1": vector, "deep2": vector})  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="steadypool.cam"):
        summary = run_cam(cam_config(labels, tmp_path / "out", images=images))
    assert (summary.done, summary.failures) == (2, [])
    warned = [r for r in caplog.records if "16-bit" in r.getMessage()]
    assert len(warned) == 1


@pytest.mark.parametrize("fmt", sorted(RECIPES))
def test_a_1x1_image_fails_naming_the_scale_and_size(
    fmt: str, labels_file: Path, tmp_path: Path
) -> None:
    """A 1x1 image at scale 0.5 fails alone with the scale and the size in the reason."""
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (1, 1), (200, 10, 10)).save(images / "dot.png")
    shutil.copy(demo_images() / "chelsea.jpg", images / "chelsea.jpg")
    vector = _labels(labels_file)["chelsea"]
    labels = tmp_path / "labels.npy"
    np.save(labels, {"dot": vector, "chelsea": vector})  # type: ignore[arg-type]
    summary = run_cam(cam_config(labels, tmp_path / "out", images=images, format=fmt))
    assert summary.done == 1
    [(name, reason)] = summary.failures
    assert name == "dot"
    assert "scale 0.5 makes the 1x1 image 0x0 pixels" in reason
