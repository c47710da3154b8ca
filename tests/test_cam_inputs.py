"""`steadypool cam` as a new user meets it: refusals before work, resume, bad CAMs, help."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("PIL")

import torch

import steadypool.cam
from steadypool._cli import _parser, main
from steadypool.cam import CamConfig, CamInputError, demo_images, run

from .conftest import cam_config

ROOT = Path(__file__).resolve().parent.parent
NAMES = ("astronaut", "chelsea", "coffee", "rocket")


def _cli(*args: str) -> list[str]:
    return ["cam", "--images", str(demo_images()), "--model", "demo", "--quiet", *args]


@pytest.fixture
def bad_inputs(tmp_path: Path) -> dict[str, str]:
    """Files the refusal cases name: labels as an array, labels of 5 classes, a list."""
    np.save(tmp_path / "array.npy", np.zeros((4, 20)))
    np.save(tmp_path / "five.npy", {n: np.ones(5, np.float32) for n in NAMES})  # type: ignore[arg-type]
    (tmp_path / "list.txt").write_text("astronaut\n")
    return {
        "ARRAY": str(tmp_path / "array.npy"),
        "FIVE": str(tmp_path / "five.npy"),
        "LIST": str(tmp_path / "list.txt"),
    }


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--scales", "1.0,abc"], "--scales: 'abc' is not a number"),
        (["--scales", "nan"], "--scales must be positive finite numbers, got nan"),
        (["--scales", "1.0", "inf"], "--scales must be positive finite numbers, got 1.0, inf"),
        (["--scales", ","], "--scales names no scale"),
        (["--devices", ""], "--devices must name at least one device"),
        (["--devices", " , "], "--devices must name at least one device"),
        (["--labels", "ARRAY"], "holds a float64 array of shape (4, 20), not the {image name"),
        (["--labels", "FIVE"], "(first: 'astronaut', 5 values) do not have one value per class"),
        (["--images", "nowhere", "--list", "LIST"], "--images nowhere is not a directory"),
        (["--model", "tests._cam_models:PooledCam"], "returned shape (2, 20)"),
        (["--model-arg", "num_classes"], "--model-arg must be NAME=VALUE"),
        (["--model-arg", "widht=3"], "unexpected keyword argument 'widht'"),
        (["--cpu-workers", "0"], "--cpu-workers must be at least 1"),
        (["--address", "auto"], "--address applies to --backend ray only"),
        (["--backend", "processes", "--devices", "cuda:7"], "cuda:7"),
    ],
)
def test_bad_runs_are_refused_with_one_line_and_no_folders(
    args: list[str],
    message: str,
    bad_inputs: dict[str, str],
    labels_file: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Each case: exit 2, one 'error:' line naming the option and the value, no
    traceback, no image tried, and no output folder (nor its parent) created."""
    args = [bad_inputs.get(a, a) for a in args]
    if "--labels" not in args:
        args += ["--labels", str(labels_file)]
    out = tmp_path / "new" / "out"
    code = main([*_cli(*args), "--out", str(out), "--pred-dir", str(tmp_path / "pred")])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.err.startswith("steadypool cam: error: ")
    assert message in captured.err
    assert len(captured.err.strip().splitlines()) == 1
    assert captured.out == ""
    assert not (tmp_path / "new").exists()
    assert not (tmp_path / "pred").exists()


# Ray's "auto" finds any Ray instance running on the machine (it scans the processes for
# a GCS server), such as the one this test session starts; the child sees none.
NO_RAY_RUNNING = """
import sys
import ray._private.services as services
def no_gcs_server():
    return []
no_gcs_server.cache_clear = lambda: None
services.find_gcs_addresses = no_gcs_server
from steadypool._cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_no_ray_cluster_at_the_address_is_refused(labels_file: Path, tmp_path: Path) -> None:
    """The README's `--backend ray --address auto` on a machine with no cluster: exit 2,
    one line saying there is none and how to start one, no output folder."""
    pytest.importorskip("ray")
    env = {**os.environ, "RAY_TMPDIR": str(tmp_path)}
    env.pop("RAY_ADDRESS", None)
    args = ["--labels", str(labels_file), "--out", str(tmp_path / "out")]
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            NO_RAY_RUNNING,
            *_cli(*args, "--backend", "ray", "--address", "auto"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "steadypool cam: error: no Ray cluster at address 'auto'" in done.stderr
    assert "ray start --head" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()


def test_demo_refuses_zero_workers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`steadypool demo --workers 0`: exit 2, the option named, no folder."""
    assert main(["demo", "--workers", "0", "--out", str(tmp_path / "d"), "--quiet"]) == 2
    assert "steadypool demo: error: --workers must be at least 1, got 0" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


BLOCK_IMPORT = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == sys.argv[1]:
            raise ImportError(f"No module named {sys.argv[1]!r}", name=sys.argv[1])
sys.meta_path.insert(0, Block())
from steadypool._cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize("missing", ["torch", "PIL"])
@pytest.mark.parametrize("command", ["demo", "cam"])
def test_without_the_cam_extra_the_error_says_what_to_install(
    missing: str, command: str, labels_file: Path, tmp_path: Path
) -> None:
    """Without torch or Pillow (blocked here), demo and cam exit 2 with one line naming
    the module and `pip install 'steadypool[cam]'`, before creating anything."""
    out = tmp_path / "out"
    args = (
        ["demo", "--out", str(out)]
        if command == "demo"
        else [*_cli("--labels", str(labels_file)), "--out", str(out)]
    )
    done = subprocess.run(
        [sys.executable, "-c", BLOCK_IMPORT, missing, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert f"needs {missing}, which cannot be imported" in done.stderr
    assert "pip install 'steadypool[cam]'" in done.stderr
    assert "Traceback" not in done.stderr
    assert not out.exists()


def test_a_network_that_needs_larger_inputs_than_32_pixels_runs(
    labels_file: Path, tmp_path: Path
) -> None:
    """The class probe grows until the network accepts it (here 64 x 64)."""
    summary = run(cam_config(labels_file, tmp_path, model="tests._cam_models:NeedsLargeInputs"))
    assert (summary.done, summary.failures) == (4, [])


def test_a_network_failing_at_every_probe_size_is_one_clear_error(
    labels_file: Path, tmp_path: Path
) -> None:
    """A network that fails whatever the size: refused, naming the sizes tried."""
    with pytest.raises(
        CamInputError,
        match=r"Broken.forward_cam\(x\) fails on zero images of 32x32, 64x64, .*, 512x512: "
        "RuntimeError: mat1 and mat2 shapes cannot be multiplied",
    ):
        run(cam_config(labels_file, tmp_path, model="tests._cam_models:Broken"))


@pytest.mark.parametrize(
    ("model", "failed", "reason"),
    [
        ("NanCam", {"chelsea", "coffee", "rocket"}, "CAM has NaN or infinite values"),
        ("NegativeCam", set(NAMES), "CAM has negative values for this image (down to -"),
    ],
)
@pytest.mark.parametrize("fmt", ["psa", "irn"])
def test_nan_or_negative_cams_fail_the_image_with_the_reason(
    model: str, failed: set[str], reason: str, fmt: str, labels_file: Path, tmp_path: Path
) -> None:
    """Such maps would be normalised into plausible files; instead the image fails,
    nothing is written for it, and the others complete."""
    summary = run(cam_config(labels_file, tmp_path, model=f"tests._cam_models:{model}", format=fmt))
    assert {name for name, _ in summary.failures} == failed
    assert all(reason in why for _, why in summary.failures)
    assert summary.done == 4 - len(failed)
    assert {p.stem for p in tmp_path.glob("*.npy")} == set(NAMES) - failed


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(30)
    return child.pid


def test_resume_redoes_an_image_whose_outputs_are_incomplete(
    labels_file: Path, tmp_path: Path
) -> None:
    """An interrupted image (its .npy written, its overlay not, a temp file left) is
    redone; temp files of dead runs go from every output folder, a live run's stay."""
    out, pred, overlay = tmp_path / "cams", tmp_path / "pred", tmp_path / "overlay"
    config = cam_config(labels_file, out, pred_dir=pred, overlay_dir=overlay)
    assert run(config).done == 4
    (overlay / "chelsea.png").unlink()
    dead = _dead_pid()
    with subprocess.Popen([sys.executable, "-c", "input()"], stdin=subprocess.PIPE) as live:
        try:
            stale = [overlay / f".chelsea.png.{dead}.tmp", out / f".rocket.npy.{dead}.tmp"]
            stale.append(pred / f".coffee.png.{dead}.tmp")
            kept = [out / f".coffee.npy.{live.pid}.tmp", tmp_path / "cams" / "notes.tmp"]
            for path in (*stale, *kept):
                path.write_bytes(b"partial")
            summary = run(config)
            assert (summary.done, summary.skipped, summary.failures) == (1, 3, [])
            assert (overlay / "chelsea.png").is_file()
            assert not any(p.exists() for p in stale)
            assert all(p.exists() for p in kept)
        finally:
            live.kill()


def test_resume_writes_outputs_asked_for_later(labels_file: Path, tmp_path: Path) -> None:
    """Adding --pred-dir to a finished run writes the predictions of every image."""
    assert run(cam_config(labels_file, tmp_path / "cams")).done == 4
    again = run(cam_config(labels_file, tmp_path / "cams", pred_dir=tmp_path / "pred"))
    assert (again.done, again.skipped) == (4, 0)
    assert {p.stem for p in (tmp_path / "pred").glob("*.png")} == set(NAMES)
    third = run(cam_config(labels_file, tmp_path / "cams", pred_dir=tmp_path / "pred"))
    assert (third.done, third.skipped) == (0, 4)


def test_resume_redoes_files_of_another_format(labels_file: Path, tmp_path: Path) -> None:
    """A rerun in another format is refused (the run record names the change) unless
    resume is off; irn files saved with numpy types, which irn's next steps cannot
    read, do not count as done."""
    out = tmp_path / "cams"
    assert run(cam_config(labels_file, out)).done == 4
    with pytest.raises(CamInputError, match=r"--format \(psa -> irn\)"):
        run(cam_config(labels_file, out, format="irn"))
    irn = run(cam_config(labels_file, out, format="irn", resume=False))
    assert (irn.done, irn.skipped) == (4, 0)
    content = np.load(out / "chelsea.npy", allow_pickle=True).item()
    assert isinstance(content["keys"], torch.Tensor)
    assert run(cam_config(labels_file, out, format="irn")).skipped == 4
    content = {k: np.asarray(v) for k, v in content.items()}  # irn keys as numpy: not irn's
    np.save(out / "chelsea.npy", content)  # type: ignore[arg-type]
    again = run(cam_config(labels_file, out, format="irn"))
    assert (again.done, again.skipped) == (1, 3)
    back = run(cam_config(labels_file, out, format="psa", resume=False))
    assert (back.done, back.skipped) == (4, 0)


def test_start_up_is_announced_on_the_bar(labels_file: Path, tmp_path: Path) -> None:
    """While process workers start (seconds), the bar says what is starting."""
    args = ["--labels", str(labels_file), "--out", str(tmp_path / "out")]
    args += ["--backend", "processes", "--devices", "cpu,cpu"]
    done = subprocess.run(
        [sys.executable, "-m", "steadypool", *[a for a in _cli(*args) if a != "--quiet"]],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "starting 2 device workers (processes) on cpu: loading the model" in done.stderr
    assert "4 done" in done.stdout


def test_model_arguments_and_cpu_workers(labels_file: Path, tmp_path: Path) -> None:
    """--model-arg values are Python literals (else strings); --cpu-workers is used."""
    five = {n: np.eye(5, dtype=np.float32)[i] for i, n in enumerate(NAMES)}
    np.save(tmp_path / "five.npy", five)  # type: ignore[arg-type]
    args = ["--labels", str(tmp_path / "five.npy"), "--out", str(tmp_path / "out")]
    assert main(_cli(*args, "--model-arg", "num_classes=5", "--cpu-workers", "1")) == 0
    assert sorted(np.load(tmp_path / "out" / "astronaut.npy", allow_pickle=True).item()) == [0]
    from steadypool._cli import _model_args

    assert _model_args(["a=5", "b=0.5", "c=hello", "d=(1, 2)", "e='x'", "f=True"]) == {
        "a": 5,
        "b": 0.5,
        "c": "hello",
        "d": (1, 2),
        "e": "x",
        "f": True,
    }


def test_every_option_has_help() -> None:
    """Every option of every command says what it does."""
    parser = _parser()
    commands = next(a for a in parser._actions if a.dest == "command")
    assert commands.choices is not None
    for name, sub in dict(commands.choices).items():
        for action in sub._actions:
            assert action.help, f"steadypool {name} {action.option_strings} has no help"


def test_diagnose_formats_a_saved_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`steadypool diagnose FILE` (or `-`) prints the environment, then the report."""
    report = "steadypool stall: no item finished for 300.0s\n  worker 0 (cuda:0): item 41"
    (tmp_path / "report.txt").write_text(report + "\n")
    assert main(["diagnose", str(tmp_path / "report.txt")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("steadypool diagnosis\n")
    assert out.rstrip().endswith(report)
    monkeypatch.setattr(sys, "stdin", io.StringIO(report))
    assert main(["diagnose", "-"]) == 0
    assert capsys.readouterr().out.rstrip().endswith(report)
    assert main(["diagnose", str(tmp_path / "missing.txt")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_the_public_api(labels_file: Path, tmp_path: Path) -> None:
    """`steadypool.cam` exports what it says; CamConfig takes strings for paths and
    refuses bad values on construction; run returns a typed summary."""
    for name in steadypool.cam.__all__:
        assert getattr(steadypool.cam, name).__module__.startswith("steadypool")
    config = CamConfig(
        images=str(demo_images()),  # type: ignore[arg-type]  # typed Path; str accepted
        labels=str(labels_file),  # type: ignore[arg-type]
        model="demo",
        out=str(tmp_path / "out"),  # type: ignore[arg-type]
        progress=False,
    )
    assert isinstance(config.out, Path)
    summary = run(config)
    assert (summary.total, summary.done, summary.images_per_second > 0) == (4, 4, True)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"format": "voc"}, "--format"),
        ({"backend": "dask"}, "--backend"),
        ({"scales": (0.5, float("nan"))}, "--scales"),
        ({"devices": ()}, "--devices"),
        ({"bg": float("inf")}, "--bg"),
    ]
    for bad, message in cases:
        with pytest.raises(CamInputError, match=message):
            cam_config(labels_file, tmp_path, **bad)


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
@pytest.mark.parametrize("fmt", ["psa", "irn"])
def test_amp_runs_the_network_in_half_precision(
    amp: str, fmt: str, labels_file: Path, tmp_path: Path
) -> None:
    """--amp runs the network under autocast (here on the CPU): the maps differ from the
    float32 ones, by little; they are still float32 files of the same format."""
    exact = run(cam_config(labels_file, tmp_path / "fp32", format=fmt))
    half = run(cam_config(labels_file, tmp_path / amp, format=fmt, amp=amp))
    assert exact.done == half.done == 4
    largest = 0.0
    for name in NAMES:
        a = np.load(tmp_path / "fp32" / f"{name}.npy", allow_pickle=True).item()
        b = np.load(tmp_path / amp / f"{name}.npy", allow_pickle=True).item()
        assert a.keys() == b.keys()
        for key in a:
            if fmt == "irn" and key == "keys":
                assert torch.equal(a[key], b[key])
                continue
            got, want = np.asarray(b[key]), np.asarray(a[key])
            assert got.dtype == np.float32
            largest = max(largest, float(np.abs(got - want).max()))
    assert 0 < largest < 0.1, largest
    with pytest.raises(CamInputError, match="--amp must be bf16 or fp16"):
        cam_config(labels_file, tmp_path, amp="int8")
