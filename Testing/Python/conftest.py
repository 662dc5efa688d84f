"""Shared test fixtures and helpers: data paths, the stroke images, known-warp cases.

The stroke T1/T2/FLAIR (aligned, oblique, 1 mm, MIT) are bundled with the project in
``Resources/SampleData/stroke``, so the tests that use them run from the project alone (tests
that need more data read ``../shared/data`` and skip, saying so, when it is absent).

Plain helpers (no pytest state) are imported by the test modules with ``from conftest import ...``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from dmmreg import spatial
from dmmreg.geometry import Geometry
from dmmreg.image import Image
from dmmreg.image_io import read_image, to_sitk
from dmmreg.known_warp import KnownWarpSettings, deform, endpoint_error, random_known_warp
from dmmreg.result import RegistrationResult

STROKE = Path(__file__).parents[2] / "Resources" / "SampleData" / "stroke"
CONTRASTS = ("T1", "T2", "FLAIR")


def require(path: Path) -> Path:
    """``path``, or skip the test when the data file is absent."""
    if not path.exists():
        pytest.skip(f"real test data not found at {path}")
    return path


@pytest.fixture(scope="session")
def stroke_paths() -> dict[str, Path]:
    """Files of the bundled stroke T1, T2 and FLAIR."""
    return {contrast: require(STROKE / f"{contrast}.nii.gz") for contrast in CONTRASTS}


@pytest.fixture(scope="session")
def stroke(stroke_paths) -> dict[str, Image]:
    """The stroke T1, T2 and FLAIR as float32 images (one oblique 124 x 160 x 140 grid, 1 mm)."""
    images = {}
    for contrast, path in stroke_paths.items():
        image = read_image(path)
        images[contrast] = image.with_array(image.array.astype(np.float32))
    return images


@pytest.fixture(scope="session")
def cohort_folder(tmp_path_factory, stroke_paths) -> Path:
    """A training cohort in the folder layout: two subjects, "a" and "b", each with links to the
    stroke T1, T2 and FLAIR."""
    root = tmp_path_factory.mktemp("cohort")
    for subject in ("a", "b"):
        (root / subject).mkdir()
        for contrast, path in stroke_paths.items():
            (root / subject / f"{contrast}.nii.gz").symlink_to(path)
    return root


def oblique_geometry(size=(24, 20, 16), spacing=(1.0, 1.5, 2.5), origin=(-10.0, 5.0, 20.0)) -> Geometry:
    """A rotated, anisotropic grid (2D when ``size`` has two entries)."""
    dim = len(size)
    angles = torch.tensor([0.2, -0.1, 0.3][: 1 if dim == 2 else 3], dtype=torch.float64)
    return Geometry(size, spacing, origin[:dim], spatial.rotation_matrix(angles).numpy())


def affine_about_centre(geometry: Geometry, shift, angles, scales, shear=None) -> np.ndarray:
    """Homogeneous matrix of a rotation/scaling/shear about the grid centre plus a shift (float64)."""
    as_tensor = lambda values: torch.tensor(values, dtype=torch.float64)  # noqa: E731
    return spatial.affine_matrix(
        geometry.centre, as_tensor(shift), as_tensor(angles), torch.log(as_tensor(scales)),
        None if shear is None else as_tensor(shear),
    ).numpy()


def physical_coordinates(geometry: Geometry) -> np.ndarray:
    """LPS points of every voxel, ``(*shape, dim)``, float64."""
    return spatial.grid_points(geometry, dtype=torch.float64).numpy()


def sitk_resample(moving: Image, geometry: Geometry, transform, label: bool = False) -> np.ndarray:
    """``SimpleITK.Resample`` of ``moving`` onto ``geometry`` through ``transform`` (default 0)."""
    import SimpleITK as sitk

    reference = to_sitk(Image(np.zeros(geometry.shape, np.float32), geometry))
    interpolator = sitk.sitkNearestNeighbor if label else sitk.sitkLinear
    moving_sitk = to_sitk(moving.with_array(np.asarray(moving.array, dtype=np.float64)))
    return sitk.GetArrayFromImage(sitk.Resample(moving_sitk, reference, transform, interpolator, 0.0))


def assert_same_resampling(ours: np.ndarray, theirs: np.ndarray, transform_extension: str, intensity_range: float) -> None:
    """``ours`` (float32, from :meth:`RegistrationResult.warp`) equals SimpleITK's float64
    resampling ``theirs`` through a transform file: to float32 resolution (1e-6 of the intensity
    range; a bound in ULPs fails near zero, where float64 rounding noise alone is several ULPs)
    through an ``.h5`` composite, to 1e-4 of the range through a ``.nii.gz`` field."""
    if transform_extension == ".h5":
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6 * intensity_range)
    else:
        np.testing.assert_allclose(ours, theirs, atol=1e-4 * intensity_range)


@dataclass
class KnownWarpCase:
    """``fixed(p) = source(G(p))``: registering any image aligned with the source to ``fixed``
    should recover ``truth`` = G.  ``brain`` is where ``fixed`` is non-zero."""

    fixed: Image
    truth: RegistrationResult

    @property
    def brain(self) -> np.ndarray:
        return self.fixed.array > 0

    def mean_endpoint_error(self, estimate: RegistrationResult) -> float:
        """Mean |T(p) - G(p)| (mm) over the brain voxels of the fixed image."""
        return float(endpoint_error(estimate, self.truth, self.brain).mean())

    @property
    def initial_endpoint_error(self) -> float:
        """The same error before registration (T = identity)."""
        g = self.fixed.geometry
        return self.mean_endpoint_error(RegistrationResult(g, self.truth.moving_geometry, np.eye(g.dim + 1)))


def known_warp_case(source: Image, seed: int, settings: KnownWarpSettings = KnownWarpSettings()) -> KnownWarpCase:
    """``source`` deformed by the random known warp of ``seed`` (magnitude measured in its foreground)."""
    truth = random_known_warp(source.geometry, seed, settings, mask=source.array > source.array.min())
    return KnownWarpCase(deform(source, truth), truth)


def folding_percent(result: RegistrationResult, mask: np.ndarray) -> float:
    """Percentage of ``mask`` voxels (fixed grid) where the transform folds (det J <= 0)."""
    return float(100 * np.mean(result.jacobian_determinant().array[mask] <= 0))


# --------------------------------------------------------------------------------------------
# Learned methods: brief training on real known-warp pairs


def stroke_slice_2d(stroke: dict[str, Image], contrast: str, offset: int = 0) -> Image:
    """An axial slice of the stroke ``contrast`` (``offset`` slices from the middle) as a 2D image
    with the in-plane spacing (identity direction, origin 0)."""
    g = stroke[contrast].geometry
    geometry = Geometry(g.size[:2], g.spacing[:2], (0.0, 0.0), np.eye(2))
    return Image(stroke[contrast].array[g.size[2] // 2 + offset], geometry)


def mean_loss(history: list[dict], stage: str, first: bool, count: int = 5, key: str = "total") -> float:
    """Mean of ``key`` over the first (or last) ``count`` training records of ``stage``."""
    values = [record[key] for record in history if record["stage"] == stage]
    return float(np.mean(values[:count] if first else values[-count:]))


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op torch thread for a module of small-network tests: a second thread saves only
    ~20 % of a training step on an idle 2-core machine, on a busy one its synchronisation made
    training ~10x slower, and results then do not depend on the machine's thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def stroke_batches(stroke) -> dict[int, "TrainingBatch"]:
    """Known-warp training pairs (seed 0) of the stroke data, T1 moving, deformed T2 fixed:
    ``{2: mid axial slice on a 2 mm model grid, 3: the volume on a 4 mm model grid}``
    (margin 8 mm; the model configs of the method tests use the same spacings)."""
    from dmmreg.methods.learned import ModelConfig
    from dmmreg.training.pairs import known_warp_batch

    t1, t2 = stroke_slice_2d(stroke, "T1"), stroke_slice_2d(stroke, "T2")
    return {
        2: known_warp_batch(t2, t1, ModelConfig(dim=2, spacing_mm=2.0), seed=0),
        3: known_warp_batch(stroke["T2"], stroke["T1"], ModelConfig(dim=3, spacing_mm=4.0), seed=0),
    }


def assert_gradients_reach(module: torch.nn.Module, loss: torch.Tensor) -> None:
    """Backpropagate ``loss`` and assert every trainable parameter of ``module`` gets a finite,
    not all-zero gradient (names the parameters that do not)."""
    for p in module.parameters():
        p.grad = None
    loss.backward()
    missing = [n for n, p in module.named_parameters() if p.requires_grad and (p.grad is None or not torch.isfinite(p.grad).all() or not p.grad.abs().sum() > 0)]
    assert not missing, f"no (finite, non-zero) gradient reaches {missing}"
