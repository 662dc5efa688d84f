"""``RegistrationResult.warp`` resamples in slabs: any slab size gives the same image."""

import numpy as np

from dmmreg import result as result_module
from dmmreg.geometry import Geometry
from dmmreg.image import Image
from dmmreg.result import RegistrationResult


def test_warp_in_small_slabs_equals_warp_in_one(monkeypatch):
    rng = np.random.default_rng(0)
    geometry = Geometry((9, 8, 7), (1.0, 1.2, 1.5), (3.0, -2.0, 1.0), np.eye(3))
    field = Geometry((6, 6, 6), (3.0, 3.0, 3.0), (-2.0, -6.0, -4.0), np.eye(3))
    affine = np.eye(4)
    affine[:3, 3] = (0.7, -0.4, 0.2)
    result = RegistrationResult(geometry, geometry, affine, field, rng.normal(0, 1, (6, 6, 6, 3)),
                                rng.normal(0, 1, (6, 6, 6, 3)))
    moving = Image(rng.random((7, 8, 9)).astype(np.float32), geometry)
    labels = Image(rng.integers(0, 4, (7, 8, 9)).astype(np.uint8), geometry)
    whole = [result.warp(moving), result.warp(labels, mode="nearest"), result.warp(moving, inverse=True)]
    monkeypatch.setattr(result_module, "WARP_SLAB_VOXELS", 20)  # slabs of one z slice
    slabs = [result.warp(moving), result.warp(labels, mode="nearest"), result.warp(moving, inverse=True)]
    for a, b in zip(whole, slabs):
        assert a.array.dtype == b.array.dtype
        np.testing.assert_array_equal(a.array, b.array)
