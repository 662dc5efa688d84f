"""Training pairs: cohort subjects on a model grid, and random known-warp pairs drawn from them.

A *known-warp pair* follows the FIRE protocol (000_9877b33c2dcaa129.txt sec. 4.1) on real,
aligned multi-contrast images of one subject: the fixed image is one contrast deformed by a
random known warp ``G``, the moving image another contrast, undeformed, so ``G`` is the exact
answer (used for validation only, never in an unsupervised loss).

Data flow: cohort files -> :func:`load_subject` (each image normalised to [0, 1] and resampled
onto the subject's 3D model grid, axis-aligned in LPS) -> :class:`PairSampler` (contrasts,
synthetic contrasts from labels, random spatial transform, intensity augmentation; axial slices
for 2D models) -> :class:`~dmmreg.methods.learned.TrainingBatch`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

from . import augmentation
from .. import spatial
from .cohorts import Cohort, Subject
from ..errors import InputError
from ..geometry import Geometry
from ..image import Image
from ..image_io import read_image
from ..known_warp import KnownWarpSettings, deform, random_known_warp
from ..methods.learned import TrainingBatch, image_tensor, model_grid, onto_model_grid

SYNTHETIC = "synthetic"  # the contrast name of images drawn from a label map


def known_warp_batch(fixed_contrast: Image, moving_contrast: Image, config, seed: int,
                     settings: KnownWarpSettings = KnownWarpSettings()) -> TrainingBatch:
    """A known-warp pair at full resolution, resampled onto the model grid of ``config`` (a
    :class:`ModelConfig`): ``fixed_contrast`` deformed by the random warp ``G`` of ``seed``
    (:func:`~dmmreg.known_warp.random_known_warp`) is the fixed image, ``moving_contrast``
    (aligned with it, same grid) the moving one.  Masks: non-zero voxels (skull-stripped data)."""
    if fixed_contrast.geometry != moving_contrast.geometry:
        raise ValueError("a known-warp pair needs two aligned contrasts on one grid")
    foreground = fixed_contrast.array > fixed_contrast.array.min()
    truth = random_known_warp(fixed_contrast.geometry, seed, settings, mask=foreground)
    fixed = deform(fixed_contrast, truth)
    geometry = model_grid(fixed.geometry, config.spacing_mm, config.margin_mm)
    fixed_t = onto_model_grid(image_tensor(fixed, None, "cpu"), fixed.geometry, geometry)
    moving_t = onto_model_grid(image_tensor(moving_contrast, None, "cpu"), moving_contrast.geometry, geometry)
    true = torch.from_numpy(truth.resampling_displacement(geometry)).float()
    return TrainingBatch(
        fixed=fixed_t,
        moving=moving_t,
        geometry=geometry,
        fixed_mask=(fixed_t > 0.02).float(),
        moving_mask=(moving_t > 0.02).float(),
        true_displacement=torch.movedim(true, -1, 0)[None],
    )


@dataclass
class SubjectVolumes:
    """One subject on its 3D model grid ``geometry``: ``images`` (contrast -> ``(1, 1, *shape)``
    in [0, 1], zero outside the brain), ``mask`` (1 inside), ``labels`` (integer map or None)."""

    name: str
    geometry: Geometry
    images: dict[str, torch.Tensor]
    mask: torch.Tensor
    labels: torch.Tensor | None = None


def _same_grid(a: Geometry, b: Geometry) -> bool:
    return a.size == b.size and np.allclose(a.spacing, b.spacing, atol=1e-3) and np.allclose(
        a.origin, b.origin, atol=1e-2) and np.allclose(a.direction, b.direction, atol=1e-3)


def load_subject(subject: Subject, spacing_mm: float, margin_mm: float, align_contrasts: bool = False) -> SubjectVolumes:
    """Read ``subject``'s files and resample them onto a 3D model grid around its brain.

    ``align_contrasts``: first register every contrast to the first one (``optimise``'s affine
    pre-alignment) and resample it through that affine, for subjects whose contrasts are only
    roughly aligned (aurora-met's; benchmarks/README.md, "NMI and shifts"): a known warp is
    exact only for aligned contrasts, and an unsupervised loss teaches a network their offset.

    The brain mask is the subject's mask file, else its labels > 0, else the voxels above 2 %
    of any normalised image.  When a mask or labels exist, intensities are normalised inside it
    and the images multiplied by it (dilated by one model voxel), so skull-on images look like
    the skull-stripped ones.  The grid is cropped to the mask's bounding box plus ``margin_mm``
    (each axis a multiple of 16 voxels), as the model grid of a skull-stripped image would be."""
    images = {c: read_image(p, f"{c} image of subject {subject.name!r}") for c, p in subject.images.items()}
    reference = next(iter(images.values()))
    if reference.dim != 3:
        raise InputError(f"subject {subject.name!r}: training reads 3D volumes (2D models train on their axial "
                         f"slices); {subject.images[next(iter(images))]} is {reference.dim}D")
    geometry = model_grid(reference.geometry, spacing_mm, margin_mm)
    labels = mask = brain = None
    if subject.labels is not None:
        label_image = read_image(subject.labels, f"label map of subject {subject.name!r}")
        if not _same_grid(label_image.geometry, reference.geometry):
            raise InputError(f"label map {subject.labels} of subject {subject.name!r} is not on the grid of its images "
                             f"({label_image.geometry.size} voxels of {label_image.geometry.spacing} mm vs "
                             f"{reference.geometry.size} of {reference.geometry.spacing}); resample it onto the image grid")
        labels = onto_model_grid(torch.as_tensor(label_image.array.astype(np.float32))[None, None], label_image.geometry,
                                 geometry, mode="nearest").round().short()
        mask = (labels > 0).float()
        brain = label_image.with_array((label_image.array > 0).astype(np.uint8))
    if subject.mask is not None:
        mask_image = read_image(subject.mask, f"mask of subject {subject.name!r}")
        mask = (onto_model_grid(torch.as_tensor((mask_image.array > 0).astype(np.float32))[None, None],
                                mask_image.geometry, geometry, mode="nearest") > 0.5).float()
        brain = mask_image
    on_grid = {}
    for contrast, image in images.items():
        inside = brain if brain is not None and _same_grid(brain.geometry, image.geometry) else None
        affine = None
        if align_contrasts and image is not reference:
            from ..methods.optimise import prealign

            affine = torch.as_tensor(prealign(reference, image), dtype=torch.float32)
        on_grid[contrast] = onto_model_grid(image_tensor(image, inside, "cpu"), image.geometry, geometry, affine=affine)
    if mask is None:
        mask = (torch.stack(list(on_grid.values())).amax(dim=0) > 0.02).float()
    else:
        dilated = F.max_pool3d(mask, 3, stride=1, padding=1)
        on_grid = {c: volume * dilated for c, volume in on_grid.items()}
    crop = _crop_box(mask, int(np.ceil(margin_mm / spacing_mm)))
    cut = lambda t: None if t is None else t[(..., *crop)]  # noqa: E731
    start = np.array([c.start for c in crop[::-1]], dtype=np.float64)  # x, y, z
    cropped = Geometry(tuple(c.stop - c.start for c in crop[::-1]), geometry.spacing,
                       tuple(geometry.physical_points(start)), geometry.direction)
    return SubjectVolumes(subject.name, cropped, {c: cut(v) for c, v in on_grid.items()}, cut(mask), cut(labels))


def _crop_box(mask: torch.Tensor, margin: int, multiple: int = 16) -> tuple[slice, ...]:
    """Index slices (z, y, x) of the mask's bounding box grown by ``margin`` voxels and to a
    multiple of ``multiple`` (centred; kept inside the volume where it fits)."""
    boxes = []
    for axis in range(3):
        others = tuple(a for a in range(3) if a != axis)
        occupied = torch.nonzero(mask[0, 0].sum(dim=others) > 0)[:, 0]
        n = mask.shape[2 + axis]
        low, high = (int(occupied.min()), int(occupied.max()) + 1) if occupied.numel() else (0, n)
        length = min(n, int(np.ceil((high - low + 2 * margin) / multiple) * multiple))
        start = min(max(0, (low + high - length) // 2), n - length)
        boxes.append(slice(start, start + length))
    return tuple(boxes)


def load_cohort(cohort: Cohort, spacing_mm: float, margin_mm: float, progress=None,
                align_contrasts: bool = False) -> list[SubjectVolumes]:
    """Every subject of ``cohort`` on its model grid (see :func:`load_subject`)."""
    report = progress or (lambda *_: None)
    volumes = []
    for number, subject in enumerate(cohort.subjects):
        report("load", number / max(len(cohort), 1), f"reading subject {subject.name} ({number + 1}/{len(cohort)})")
        volumes.append(load_subject(subject, spacing_mm, margin_mm, align_contrasts))
    return volumes


def middle_slices(low: int, high: int) -> tuple[int, int]:
    """``(start, stop)``: a brain's slice extent ``low .. high`` less its first and last 20 %, the
    axial slices 2D models are trained (:class:`PairSampler`) and validated
    (:mod:`dmmreg.training.validation`) on."""
    cut = int(0.2 * (high - low))
    return low + cut, high - cut


def _slice_geometry(geometry: Geometry) -> Geometry:
    """The 2D geometry of one axial slice of an axis-aligned (identity-direction) 3D grid."""
    return Geometry(geometry.size[:2], geometry.spacing[:2], geometry.origin[:2], np.eye(2))


@dataclass(frozen=True)
class PairSettings:
    """How pairs are drawn.

    ``dim``: 3 (volumes) or 2 (axial slices through the brain's middle 60 %); ``contrast_pairs``:
    allowed ``(fixed, moving)`` contrasts (None: any two different contrasts of a subject, the
    same one when it has only one); ``synthetic``: probability of replacing each contrast by a
    synthetic one drawn from the labels (subjects with labels only); ``across_subjects``: the
    moving image comes from another subject (no known warp then, only labels for Dice), placed
    by matching the masks' centres of mass; ``shift_moving``: resample the moving image through a
    random shift of up to half a voxel per axis (the truth shifted with it), so that both images of
    a pair are interpolated: otherwise the warped fixed image is blurrier than the moving one, NMI
    then peaks where the moving image is blurred too, off the true map, and a network trained on
    NMI learns to shift it there (benchmarks/README.md, "Training pairs: sub-voxel shift")."""

    dim: int = 3
    contrast_pairs: tuple[tuple[str, str], ...] | None = None
    synthetic: float = 0.0
    across_subjects: bool = False
    spatial: augmentation.SpatialAugmentation = augmentation.RESIDUAL_AFFINE
    intensity: augmentation.IntensityAugmentation | None = augmentation.IntensityAugmentation()
    shift_moving: bool = True


class PairSampler:
    """``sampler(seed)`` -> a :class:`TrainingBatch` drawn reproducibly from ``subjects``."""

    def __init__(self, subjects: list[SubjectVolumes], settings: PairSettings, weights: list[float] | None = None):
        """``weights``: relative probability of drawing each subject (default: equal)."""
        if not subjects:
            raise InputError("no subjects to train on; check the cohort and the --validation subjects")
        self.subjects = subjects
        self.settings = settings
        self.weights = torch.as_tensor(weights if weights is not None else [1.0] * len(subjects), dtype=torch.float64)
        pairs = settings.contrast_pairs
        if pairs is not None:
            for s in subjects:
                if not self._usable_pairs(s):
                    raise InputError(f"subject {s.name!r} has none of the contrast pairs {pairs} (it has "
                                     f"{', '.join(s.images)}); choose pairs every subject has")
        if settings.synthetic > 0 and not any(s.labels is not None for s in subjects):
            raise InputError("synthetic contrasts need label maps; the cohort has none (add a labels column or file)")
        if settings.across_subjects and len(subjects) < 2:
            raise InputError("pairs across subjects need at least two subjects")

    def _contrasts(self, subject: SubjectVolumes, generator: torch.Generator) -> tuple[str, str]:
        pairs = self.settings.contrast_pairs
        if pairs is None:
            names = list(subject.images)
            if len(names) == 1:
                return names[0], names[0]
            first = int(torch.randint(len(names), (1,), generator=generator))
            second = int(torch.randint(len(names) - 1, (1,), generator=generator))
            return names[first], names[second + (second >= first)]
        usable = self._usable_pairs(subject)
        return usable[int(torch.randint(len(usable), (1,), generator=generator))]

    def _usable_pairs(self, subject: SubjectVolumes) -> list[tuple[str, str]]:
        """The allowed contrast pairs ``subject`` has (synthetic ones need its labels)."""
        has = lambda c: c in subject.images or (c == SYNTHETIC and subject.labels is not None)  # noqa: E731
        return [p for p in self.settings.contrast_pairs if all(has(c) for c in p)]

    def _image(self, subject: SubjectVolumes, contrast: str, generator: torch.Generator) -> torch.Tensor:
        synthetic = subject.labels is not None and (
            contrast == SYNTHETIC or float(torch.rand(1, generator=generator)) < self.settings.synthetic)
        if synthetic:
            return augmentation.synthetic_contrast(subject.labels, generator).float()
        return subject.images[contrast]

    def __call__(self, seed: int) -> TrainingBatch:
        s = self.settings
        generator = torch.Generator().manual_seed(int(seed))
        fixed_subject = self.subjects[int(torch.multinomial(self.weights, 1, generator=generator))]
        moving_subject = fixed_subject
        if s.across_subjects:
            others = [v for v in self.subjects if v is not fixed_subject]
            moving_subject = others[int(torch.randint(len(others), (1,), generator=generator))]
        fixed_contrast, moving_contrast = self._contrasts(fixed_subject, generator)
        if moving_contrast not in moving_subject.images and moving_contrast != SYNTHETIC:
            moving_contrast = next(iter(moving_subject.images))
        fixed = self._image(fixed_subject, fixed_contrast, generator)
        moving = self._image(moving_subject, moving_contrast, generator)
        geometry = fixed_subject.geometry
        fixed_labels, moving_labels = fixed_subject.labels, moving_subject.labels
        fixed_mask, moving_mask = fixed_subject.mask, moving_subject.mask
        if moving_subject is not fixed_subject:
            moving, moving_mask, moving_labels = self._place(moving_subject, moving, fixed_subject)
        if s.dim == 2:
            index = self._slice_index(fixed_mask, generator)
            take = lambda t: None if t is None else t[:, :, index]  # noqa: E731
            fixed, moving, fixed_mask, moving_mask = take(fixed), take(moving), take(fixed_mask), take(moving_mask)
            fixed_labels, moving_labels = take(fixed_labels), take(moving_labels)
            geometry = _slice_geometry(geometry)
        affine, displacement = augmentation.random_spatial_transform(geometry, generator, s.spatial)
        affine, displacement = affine.float(), displacement.float()
        warp = lambda t, mode="linear": spatial.warp(t.float(), geometry, geometry, affine, displacement, mode=mode)  # noqa: E731
        fixed = warp(fixed)
        fixed_mask = (warp(fixed_mask) > 0.5).float()
        if fixed_labels is not None:
            fixed_labels = warp(fixed_labels, "nearest").round().short()
        truth = None if s.across_subjects else augmentation.true_displacement(geometry, affine.double(), displacement.double()).float()
        if s.shift_moving:
            shift = (torch.rand(geometry.dim, generator=generator, dtype=torch.float64) - 0.5) * torch.tensor(geometry.spacing)
            moving, moving_mask, moving_labels = self._translate(moving, moving_mask, moving_labels, geometry, geometry,
                                                                 shift, padding="border")
            if truth is not None:  # moving'(q) = moving(q + shift): the map to it is G(p) - shift
                truth = truth - shift.float().reshape(1, -1, *([1] * geometry.dim))
        if s.intensity is not None:
            fixed = augmentation.random_intensity(fixed, generator, s.intensity, fixed_mask)
            moving = augmentation.random_intensity(moving, generator, s.intensity, moving_mask)
        return TrainingBatch(fixed, moving, geometry, fixed_mask, moving_mask, truth, fixed_labels, moving_labels)

    @staticmethod
    def _translate(image: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor | None, source: Geometry,
                   target: Geometry, shift, padding: str = "zeros"):
        """Image, mask and labels on ``source`` seen on ``target`` through ``q -> q + shift`` (mm, x y z)."""
        matrix = torch.eye(target.dim + 1, dtype=torch.float32)
        matrix[:target.dim, target.dim] = torch.as_tensor(shift, dtype=torch.float32)
        move = lambda t, mode: spatial.warp(t.float(), source, target, matrix, mode=mode, padding=padding)  # noqa: E731
        moved_labels = None if labels is None else move(labels, "nearest").round().short()
        return move(image, "linear"), (move(mask, "nearest") > 0.5).float(), moved_labels

    @classmethod
    def _place(cls, moving_subject: SubjectVolumes, moving: torch.Tensor, fixed_subject: SubjectVolumes):
        """The moving subject's image, mask and labels on the fixed subject's grid, shifted so the
        masks' centres of mass coincide."""
        shift = (spatial.centre_of_mass(moving_subject.mask, moving_subject.geometry)
                 - spatial.centre_of_mass(fixed_subject.mask, fixed_subject.geometry))
        return cls._translate(moving, moving_subject.mask, moving_subject.labels, moving_subject.geometry,
                              fixed_subject.geometry, shift)

    @staticmethod
    def _slice_index(mask: torch.Tensor, generator: torch.Generator) -> int:
        """An axial slice through the middle 60 % of the mask's extent."""
        rows = torch.nonzero(mask[0, 0].flatten(1).sum(dim=1) > 0)[:, 0]
        if rows.numel() == 0:
            return mask.shape[2] // 2
        start, stop = middle_slices(int(rows.min()), int(rows.max()))
        return start + int(torch.randint(max(stop - start, 1), (1,), generator=generator))

    def validation_pairs(self, count: int, seed: int = 10_000) -> list[TrainingBatch]:
        """``count`` fixed pairs (seeds ``seed``, ``seed + 1``, ...) without intensity augmentation."""
        plain = PairSampler(self.subjects, replace(self.settings, intensity=None), self.weights.tolist())
        return [plain(seed + k) for k in range(count)]
