"""Random augmentation: exact ground truth of the spatial transform, intensity ranges, synthetic
contrasts from labels, reproducibility, and pairs drawn from a cohort."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dmmreg.training import augmentation
from dmmreg import spatial
from dmmreg.geometry import Geometry
from dmmreg.training.pairs import PairSampler, PairSettings, SubjectVolumes

GEOMETRY = Geometry((40, 48, 32), (4.0, 4.0, 4.0), (-80.0, -96.0, -64.0), np.eye(3))
NONE = augmentation.SpatialAugmentation(0.0, 0.0, 0.0, 0.0, 0.0)


def blob(geometry: Geometry) -> torch.Tensor:
    points = spatial.grid_points(geometry, dtype=torch.float64)
    centre = torch.as_tensor(geometry.centre)
    return torch.exp(-((points - centre) ** 2).sum(-1) / (2 * 30.0**2)).float()[None, None]


def test_zero_ranges_give_the_identity():
    affine, displacement = augmentation.random_spatial_transform(GEOMETRY, torch.Generator().manual_seed(0), NONE)
    assert torch.allclose(affine, torch.eye(4, dtype=torch.float64)) and float(displacement.abs().max()) == 0.0


def test_true_displacement_is_the_map_that_warps_the_image():
    generator = torch.Generator().manual_seed(3)
    affine, displacement = augmentation.random_spatial_transform(GEOMETRY, generator, augmentation.STRONG_AFFINE)
    image = blob(GEOMETRY).double()
    warped = spatial.warp(image, GEOMETRY, GEOMETRY, affine, displacement)
    truth = augmentation.true_displacement(GEOMETRY, affine, displacement)
    points = spatial.grid_points(GEOMETRY, dtype=torch.float64)[None] + spatial.to_channels_last(truth)
    assert torch.allclose(warped, spatial.sample(image, GEOMETRY, points), atol=1e-10)
    # the non-rigid part has the asked mean size (drawn in [0, 2 x mean])
    sizes = [augmentation.random_spatial_transform(GEOMETRY, generator, augmentation.RESIDUAL_AFFINE)[1].norm(dim=1).mean()
             for _ in range(20)]
    assert 1.5 < float(np.mean(sizes)) < 4.5 and max(sizes) <= 2 * augmentation.RESIDUAL_AFFINE.mean_nonrigid_mm + 1e-6


def test_strong_affine_changes_a_dimension_by_up_to_half():
    generator = torch.Generator().manual_seed(0)
    changes = []
    for _ in range(200):
        affine, _ = augmentation.random_spatial_transform(GEOMETRY, generator, augmentation.STRONG_AFFINE)
        singular = torch.linalg.svdvals(affine[:3, :3])
        changes.append(float((singular - 1).abs().max()))
    # FIRE sec. 4.1: 20-50 % change across at least one dimension
    assert max(changes) > 0.3 and np.mean(changes) > 0.15 and max(changes) < 0.55


def test_intensity_augmentation_stays_in_range_keeps_the_background_and_repeats_with_its_seed():
    image, mask = blob(GEOMETRY), (blob(GEOMETRY) > 0.3).float()
    settings = augmentation.IntensityAugmentation()
    first = augmentation.random_intensity(image, torch.Generator().manual_seed(5), settings, mask)
    again = augmentation.random_intensity(image, torch.Generator().manual_seed(5), settings, mask)
    other = augmentation.random_intensity(image, torch.Generator().manual_seed(6), settings, mask)
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert float(first.min()) >= 0 and float(first.max()) <= 1 and float(first[mask == 0].abs().max()) == 0
    assert torch.equal(image, blob(GEOMETRY))  # input untouched


def test_synthetic_contrast_gives_each_label_one_random_intensity():
    labels = torch.zeros(1, 1, 32, 48, 40, dtype=torch.int16)
    labels[..., 4:28, 6:42, 5:20] = 3
    labels[..., 4:28, 6:42, 20:35] = 7
    quiet = augmentation.IntensityAugmentation(bias=0.0, gamma=0.0, noise=0.0, blur_voxels=0.0)
    images = [augmentation.synthetic_contrast(labels, torch.Generator().manual_seed(seed), quiet) for seed in range(6)]
    for image in images:
        assert float(image[labels == 0][:10].abs().max()) == 0  # far background stays 0
        inner3, inner7 = image[..., 8:24, 10:38, 8:17], image[..., 8:24, 10:38, 23:32]
        assert float(inner3.std()) < 1e-5 and float(inner7.std()) < 1e-5  # one intensity per label
    contrasts = [float(image[..., 16, 24, 10] - image[..., 16, 24, 28]) for image in images]
    assert min(contrasts) < 0 < max(contrasts)  # the label order of brightness varies: new contrasts


def test_pairs_from_subjects_carry_exact_truth_labels_and_2d_slices():
    shape = GEOMETRY.shape
    labels = (blob(GEOMETRY) > 0.4).short() + (blob(GEOMETRY) > 0.7).short()
    image = blob(GEOMETRY)
    subject = SubjectVolumes("s", GEOMETRY, {"t1": image}, (labels > 0).float(), labels)
    sampler = PairSampler([subject], PairSettings(dim=3, contrast_pairs=(("synthetic", "t1"),), intensity=None,
                                                  shift_moving=False))
    batch = sampler(1)
    assert batch.fixed.shape[2:] == shape and batch.true_displacement.shape == (1, 3, *shape)
    # the fixed labels are the moving labels seen through the true map
    points = spatial.grid_points(GEOMETRY)[None] + spatial.to_channels_last(batch.true_displacement)
    expected = spatial.sample(batch.moving_labels.float(), GEOMETRY, points, mode="nearest")
    assert float((expected.round().short() == batch.fixed_labels).float().mean()) > 0.999
    assert torch.equal(sampler(1).fixed, batch.fixed)  # one seed, one pair
    flat = PairSampler([subject], PairSettings(dim=2, intensity=None))(2)
    assert flat.geometry.dim == 2 and flat.fixed.shape[2:] == shape[1:] and flat.true_displacement.shape[1] == 2
    with pytest.raises(Exception, match="none of the contrast pairs"):
        PairSampler([subject], PairSettings(contrast_pairs=(("t2", "t1"),)))


def test_moving_image_is_shifted_by_under_half_a_voxel_and_the_truth_with_it():
    image = blob(GEOMETRY)
    subject = SubjectVolumes("s", GEOMETRY, {"t1": image}, (image > 0.3).float())
    settings = PairSettings(dim=3, spatial=NONE, intensity=None)
    batch = PairSampler([subject], settings)(4)
    shift = -batch.true_displacement.flatten(2)[0, :, 0]  # no warp: the truth is the constant -shift
    assert torch.allclose(batch.true_displacement, -shift.reshape(1, 3, 1, 1, 1), atol=1e-6)
    assert float(shift.abs().max()) <= 2.0 and float(shift.abs().min()) > 0  # 4 mm voxels
    assert torch.allclose(batch.fixed, image, atol=1e-6)  # the fixed image stays on its grid (identity warp)
    # the fixed image is the moving one seen through the truth (up to the blur of interpolating twice)
    points = spatial.grid_points(GEOMETRY)[None] + spatial.to_channels_last(batch.true_displacement)
    through_truth = float((spatial.sample(batch.moving, GEOMETRY, points) - batch.fixed).abs().max())
    assert through_truth < 0.2 * float((batch.moving - batch.fixed).abs().max()), through_truth
    unshifted = PairSampler([subject], PairSettings(dim=3, spatial=NONE, intensity=None, shift_moving=False))(4)
    assert torch.equal(unshifted.moving, image) and float(unshifted.true_displacement.abs().max()) == 0.0
