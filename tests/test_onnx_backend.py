"""ONNX Runtime backend: export and verification, the cache, backends, the CLI, bad cases.

Models are tiny: the hand-set run folder of `test_inference` (whose labels are known exactly)
and random-weight plain U-Nets (base 4) and one small ResNet34 U-Net, so that the comparison
with torch is not between two trivially linear networks. ``KIDNEYSEG_HOME`` points into each
test's temporary folder, so the user cache is never the real one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from kidneyseg import onnx_backend  # noqa: E402
from kidneyseg.cli import main  # noqa: E402
from kidneyseg.config import InferenceConfig, resolve_config  # noqa: E402
from kidneyseg.errors import KidneysegError  # noqa: E402
from kidneyseg.inference import Predictor  # noqa: E402
from kidneyseg.io import read_image, read_labels, write_volume  # noqa: E402
from kidneyseg.model_package import export_model  # noqa: E402
from kidneyseg.models import build_model, load_checkpoint, save_checkpoint  # noqa: E402
from kidneyseg.onnx_backend import (  # noqa: E402
    OnnxNetwork,
    cache_path,
    export_onnx,
    export_run,
    use_backend,
    write_onnx,
)
from kidneyseg.phase_runner import PhaseRunner  # noqa: E402
from test_inference import (  # noqa: E402
    KIDNEY_NORM,
    TINY,
    TUMOR_NORM,
    expected_labels,
    make_model_dir,
    phantom_canonical,
    volume_from_canonical,
)

NORMS = {"kidney": KIDNEY_NORM, "tumor": TUMOR_NORM}


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("KIDNEYSEG_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def random_checkpoint(
    path: Path, overrides: list[str] | None = None, seed: int = 0, phase: str = "kidney"
) -> Path:
    """A random-weight checkpoint (BatchNorm statistics too, so they are not the identity)."""
    cfg = resolve_config(overrides=TINY + list(overrides or []))
    torch.manual_seed(seed)
    net = build_model(cfg.model)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
    save_checkpoint(path, net.eval(), cfg, phase, NORMS[phase])
    return path


def _metadata(path: Path) -> dict[str, str]:
    return dict(OnnxNetwork.load(path).metadata)


def _ct() -> object:
    return volume_from_canonical(phantom_canonical((6, 32, 32)))


# ----------------------------------------------------------------------------- export


@pytest.mark.parametrize(
    "overrides, shape",
    [
        (["data.context_slices=3"], (3, 3, 64, 96)),  # 2.5D plain U-Net: 3 input channels
        (["model.architecture=unet_resnet34", "data.image_size=32"], (2, 1, 96, 32)),
    ],
)
def test_export_matches_torch_with_dynamic_shapes(
    tmp_path: Path, overrides: list[str], shape: tuple[int, ...]
) -> None:
    checkpoint = random_checkpoint(tmp_path / "kidney" / "best.safetensors", overrides)
    path = export_onnx(checkpoint)
    assert path == tmp_path / "kidney" / "best.onnx"
    model, meta = load_checkpoint(checkpoint)
    metadata = _metadata(path)
    assert metadata["checkpoint_digest"] == meta.digest and len(meta.digest) == 64
    assert metadata["phase"] == "kidney"
    assert metadata["in_channels"] == str(shape[1]) and metadata["classes"] == "1"
    # Another batch size and a non-square size than the export traced or verified with, in
    # channels_last as PhaseRunner sends it.
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(5))
    x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        expected = model(x)
    got = OnnxNetwork.load(path, meta.digest)(x)
    assert got.dtype == torch.float32 and got.shape == expected.shape == (shape[0], 1, *shape[2:])
    assert expected.std() > 1e-3  # the logits vary: not a constant network
    diff = (torch.sigmoid(got) - torch.sigmoid(expected)).abs().max()
    assert diff <= onnx_backend.VERIFY_ATOL
    torch.testing.assert_close(got, expected, atol=1e-3, rtol=1e-3)


class _ShapeSpecific(torch.nn.Module):
    """Python control flow on the input's shape: tracing bakes in the traced shape's branch,
    so the export disagrees with torch at any other size (the failure verification exists
    for)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return y if x.shape[-1] == 64 else y + 8.0


def test_export_that_does_not_match_torch_is_refused(tmp_path: Path) -> None:
    checkpoint = random_checkpoint(tmp_path / "kidney" / "best.safetensors")
    _, meta = load_checkpoint(checkpoint)
    out = tmp_path / "bad.onnx"
    with pytest.raises(KidneysegError, match="does not match torch") as info:
        write_onnx(_ShapeSpecific().eval(), meta, out)
    assert str(out) in str(info.value) and "\n" not in str(info.value)
    assert not out.exists() and not list(tmp_path.glob(".bad.onnx*"))  # nothing left behind


def test_cache_reused_and_reexported_when_checkpoint_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkpoint = random_checkpoint(tmp_path / "kidney" / "best.safetensors", seed=0)
    path = export_onnx(checkpoint)
    first = _metadata(path)["checkpoint_digest"]
    calls: list[Path] = []
    real = onnx_backend.write_onnx

    def counting(*args: object) -> OnnxNetwork:
        calls.append(Path(str(args[2])))
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(onnx_backend, "write_onnx", counting)
    assert export_onnx(checkpoint) == path and calls == []  # up to date: kept
    assert export_onnx(checkpoint, force=True) == path and calls == [path]
    random_checkpoint(checkpoint, seed=1)  # retrained: same name, other weights
    assert export_onnx(checkpoint) == path and len(calls) == 2
    second = _metadata(path)["checkpoint_digest"]
    assert second != first and second == load_checkpoint(checkpoint)[1].digest


def test_not_in_place_goes_to_the_user_cache(tmp_path: Path, home: Path) -> None:
    checkpoint = random_checkpoint(tmp_path / "kidney" / "best.safetensors")
    path = export_onnx(checkpoint, in_place=False)
    digest = load_checkpoint(checkpoint)[1].digest
    assert path == cache_path(digest) == home / "onnx" / f"{digest}.onnx"
    assert not (tmp_path / "kidney" / "best.onnx").exists()


def test_corrupt_onnx_is_a_clear_error_and_is_exported_again(tmp_path: Path) -> None:
    checkpoint = random_checkpoint(tmp_path / "kidney" / "best.safetensors")
    path = checkpoint.with_suffix(".onnx")
    path.write_bytes(b"not a protobuf at all")
    with pytest.raises(KidneysegError, match="corrupt or unreadable ONNX file") as info:
        OnnxNetwork.load(path)
    assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)
    assert export_onnx(checkpoint) == path
    assert _metadata(path)["checkpoint_digest"] == load_checkpoint(checkpoint)[1].digest
    with pytest.raises(KidneysegError, match="another checkpoint"):
        OnnxNetwork.load(path, digest="0" * 64)
    with pytest.raises(KidneysegError, match="not found"):
        OnnxNetwork.load(tmp_path / "missing.onnx")


# ----------------------------------------------------------------------------- backends


def test_both_backends_give_the_same_labels(tmp_path: Path) -> None:
    run = make_model_dir(tmp_path / "run")
    volume = volume_from_canonical(phantom_canonical())
    results = {}
    for backend in ("torch", "onnx"):
        predictor = Predictor(
            run, device="cpu", progress=False, overrides=[f"inference.backend={backend}"]
        )
        assert predictor.backend == backend == predictor.provenance["backend"]
        kind = OnnxNetwork if backend == "onnx" else torch.nn.Module
        assert all(isinstance(r.model, kind) for r in predictor.phases.values())
        results[backend] = predictor.predict_probabilities(volume)
    assert (run / "kidney" / "best.onnx").is_file() and (run / "tumor" / "best.onnx").is_file()
    (t_labels, *t_probs), (o_labels, *o_probs) = results["torch"], results["onnx"]
    np.testing.assert_array_equal(o_labels.array, t_labels.array)
    np.testing.assert_array_equal(o_labels.array, expected_labels(volume.array))
    for ours, theirs in zip(o_probs, t_probs, strict=True):
        assert np.abs(ours.array.astype(int) - theirs.array).max() <= 1


def test_auto_picks_onnx_only_when_exported(tmp_path: Path, home: Path) -> None:
    run = make_model_dir(tmp_path / "run")
    fresh = Predictor(run, device="cpu", progress=False)
    assert fresh.backend == "torch"  # the default "auto" never exports by itself
    assert not list(run.rglob("*.onnx")) and not (home / "onnx").exists()
    exported = export_run(run)
    assert exported == {p: run / p / "best.onnx" for p in ("kidney", "tumor")}
    cached = Predictor(run, device="cpu", progress=False)
    assert cached.backend == "onnx" and cached.provenance["precision"] == "fp32"
    volume = volume_from_canonical(phantom_canonical())
    np.testing.assert_array_equal(
        cached.predict_volume(volume).array, expected_labels(volume.array)
    )
    forced = Predictor(run, device="cpu", progress=False, overrides=["inference.backend=torch"])
    assert forced.backend == "torch"
    bf16 = Predictor(run, device="cpu", progress=False, overrides=["inference.precision=bf16"])
    assert bf16.backend == "torch"  # auto: ONNX only at fp32
    # A stale export (another checkpoint's) is not used by auto.
    random_checkpoint(run / "tumor" / "best.safetensors", phase="tumor")
    assert Predictor(run, device="cpu", progress=False).backend == "torch"


def test_package_exports_to_the_user_cache(tmp_path: Path, home: Path) -> None:
    run = make_model_dir(tmp_path / "run")
    package = tmp_path / "model.zip"
    export_model(run, package)
    assert Predictor(package, device="cpu", progress=False).backend == "torch"
    exported = export_run(package)
    assert all(p.parent == home / "onnx" for p in exported.values())
    assert not list(run.rglob("*.onnx"))
    predictor = Predictor(package, device="cpu", progress=False)
    assert predictor.backend == "onnx"


def test_onnx_refused_where_it_cannot_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = make_model_dir(tmp_path / "run")
    runners = {
        p: PhaseRunner.load(run / p / "best.safetensors", p, precision="fp32")
        for p in ("kidney", "tumor")
    }
    for runner in runners.values():
        runner.device = torch.device("cuda", 0)  # as configure() leaves it on a GPU machine
    with pytest.raises(KidneysegError, match="CPU only.*cuda:0.*--device cpu"):
        use_backend(runners, InferenceConfig(backend="onnx"), run)
    assert use_backend(runners, InferenceConfig(backend="auto"), run) == "torch"
    for runner in runners.values():
        runner.device = torch.device("cpu")
        runner.precision = "bf16"
    with pytest.raises(KidneysegError, match="runs fp32.*inference.precision=fp32"):
        use_backend(runners, InferenceConfig(backend="onnx", precision="bf16"), run)
    monkeypatch.setattr(onnx_backend, "onnx_available", lambda: False)  # no onnx: no export
    with pytest.raises(KidneysegError, match="export needs onnx and onnxruntime"):
        export_onnx(run / "kidney" / "best.safetensors")
    monkeypatch.setattr(onnx_backend, "runtime_available", lambda: False)
    with pytest.raises(KidneysegError, match=r"needs onnxruntime: pip install 'kidneyseg\[onnx\]'"):
        Predictor(run, device="cpu", progress=False, overrides=["inference.backend=onnx"])
    assert Predictor(run, device="cpu", progress=False).backend == "torch"
    with pytest.raises(KidneysegError, match="inference.backend must be auto, torch or onnx"):
        resolve_config(overrides=["inference.backend=tensorrt"])
    assert not list(run.rglob("*.onnx"))


def test_onnx_backend_exports_over_a_corrupt_file(tmp_path: Path) -> None:
    run = make_model_dir(tmp_path / "run")
    (run / "kidney" / "best.onnx").write_bytes(b"\x00" * 64)
    assert Predictor(run, device="cpu", progress=False).backend == "torch"  # auto: unusable
    predictor = Predictor(run, device="cpu", progress=False, overrides=["inference.backend=onnx"])
    assert predictor.backend == "onnx"
    digest = predictor.phases["kidney"].meta.digest
    assert _metadata(run / "kidney" / "best.onnx")["checkpoint_digest"] == digest


# ----------------------------------------------------------------------------- command line


def test_cli_export_onnx_and_predict_backend(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = make_model_dir(tmp_path / "run")
    assert main(["export", str(run), "--format", "onnx"]) == 0
    out = capsys.readouterr().out
    for phase in ("kidney", "tumor"):
        assert f"{phase}: {run / phase / 'best.onnx'}" in out
    src = write_volume(_ct(), tmp_path / "ct.nrrd")  # type: ignore[arg-type]
    for backend in ("onnx", "torch"):
        labels = tmp_path / f"{backend}.nii.gz"
        argv = ["predict", str(src), str(labels), "--model", str(run), "--device", "cpu"]
        assert main([*argv, "--no-progress", "--backend", backend]) == 0
        np.testing.assert_array_equal(
            read_labels(labels).array, expected_labels(read_image(src).array)
        )
    assert main(["export", str(run), str(tmp_path / "m.zip"), "--format", "onnx"]) == 2
    assert main(["export", str(run)]) == 2
    err = capsys.readouterr().err
    assert "give only RUN_DIR" in err and "export needs MODEL.zip" in err
    assert main(["export", str(run), str(tmp_path / "m.zip")]) == 0  # zip stays the default
    assert (tmp_path / "m.zip").is_file()
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    assert "--backend" in capsys.readouterr().out
