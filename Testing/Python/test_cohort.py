"""Cohorts (folder and CSV layouts), their errors, and subjects loaded onto a model grid."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dmmreg.training.cohorts import read_cohort
from dmmreg.errors import InputError
from dmmreg.image import Image
from dmmreg.image_io import write_image
from dmmreg.training.pairs import load_subject


@pytest.fixture()
def folder_cohort(tmp_path, stroke_paths):
    """Two subjects in the folder layout: both with T1 and T2 (links to the stroke files), the
    second also FLAIR."""
    root = tmp_path / "cohort"
    for subject, contrasts in (("s1", ("T1", "T2")), ("s2", ("T1", "T2", "FLAIR"))):
        (root / subject).mkdir(parents=True)
        for contrast in contrasts:
            (root / subject / f"{contrast}.nii.gz").symlink_to(stroke_paths[contrast])
    return root


def test_folder_layout_reads_subjects_and_contrasts(folder_cohort):
    cohort = read_cohort(folder_cohort)
    assert [s.name for s in cohort.subjects] == ["s1", "s2"]
    assert cohort.contrasts == ["t1", "t2", "flair"]  # case-insensitive names, first-seen order
    both = cohort.with_contrasts(["T1", "flair"])
    assert [s.name for s in both.subjects] == ["s2"] and set(both.subjects[0].images) == {"t1", "flair"}
    training, validation = cohort.split(["s2"])
    assert [s.name for s in training.subjects] == ["s1"] and [s.name for s in validation.subjects] == ["s2"]


def test_csv_layout_with_relative_paths_labels_and_empty_cells(tmp_path, stroke_paths):
    (tmp_path / "images").mkdir()
    for contrast in ("T1", "T2"):
        (tmp_path / "images" / f"{contrast}.nii.gz").symlink_to(stroke_paths[contrast])
    (tmp_path / "cohort.csv").write_text("subject,T1,T2,labels\na,images/T1.nii.gz,images/T2.nii.gz,images/T1.nii.gz\n"
                                         "b,images/T1.nii.gz,,\n")
    cohort = read_cohort(tmp_path / "cohort.csv")
    a, b = cohort.subjects
    assert a.images["t2"] == tmp_path / "images" / "T2.nii.gz" and a.labels is not None
    assert set(b.images) == {"t1"} and b.labels is None


@pytest.mark.parametrize("text, message", [
    ("subject,T1\na,missing.nii.gz\n", "T1 image of subject 'a' not found"),
    ("subject,T1\na,\n", "subject 'a' has no images"),
    ("name,T1\na,x.nii.gz\n", "'subject' column"),
    ("subject,T1\na,T1.nii.gz\na,T1.nii.gz\n", "listed twice"),
])
def test_csv_errors_name_the_problem(tmp_path, stroke_paths, text, message):
    (tmp_path / "T1.nii.gz").symlink_to(stroke_paths["T1"])
    (tmp_path / "cohort.csv").write_text(text)
    with pytest.raises(InputError, match=message):
        read_cohort(tmp_path / "cohort.csv")


def test_subjects_lacking_asked_contrasts_and_unknown_contrasts_are_errors(folder_cohort):
    cohort = read_cohort(folder_cohort)
    with pytest.raises(InputError, match="has no pd images"):
        cohort.with_contrasts(["T1", "PD"])
    with pytest.raises(InputError, match=r"only 1 subject\(s\).*lacking: s1"):
        cohort.with_contrasts(["T1", "FLAIR"], minimum=2)
    with pytest.raises(InputError, match="not a folder|neither a folder"):
        read_cohort(folder_cohort / "s1" / "T1.nii.gz")


def test_unreadable_image_is_a_clear_error(tmp_path):
    (tmp_path / "s1").mkdir()
    (tmp_path / "s1" / "T1.nii.gz").write_bytes(b"not an image")
    subject = read_cohort(tmp_path).subjects[0]
    with pytest.raises(InputError, match="T1|t1"):
        load_subject(subject, 4.0, 8.0)


def test_label_map_on_another_grid_is_refused(tmp_path, stroke):
    (tmp_path / "s1").mkdir()
    write_image(stroke["T1"], tmp_path / "s1" / "T1.nii.gz")
    small = stroke["T1"].array[::2, ::2, ::2]
    geometry = stroke["T1"].geometry
    coarse = type(geometry)(small.shape[::-1], tuple(2 * s for s in geometry.spacing), geometry.origin, geometry.direction)
    write_image(Image((small > 50).astype(np.uint8), coarse), tmp_path / "s1" / "labels.nii.gz")
    with pytest.raises(InputError, match="not on the grid of its images"):
        load_subject(read_cohort(tmp_path).subjects[0], 4.0, 8.0)


def test_loaded_subject_is_normalised_masked_and_cropped_to_the_brain(tmp_path, stroke):
    (tmp_path / "s1").mkdir()
    write_image(stroke["T1"], tmp_path / "s1" / "T1.nii.gz")
    write_image(stroke["T1"].with_array((stroke["T1"].array > 20).astype(np.uint8)), tmp_path / "s1" / "labels.nii.gz")
    volumes = load_subject(read_cohort(tmp_path).subjects[0], 4.0, 8.0)
    t1 = volumes.images["t1"]
    assert t1.shape[2:] == volumes.mask.shape[2:] == volumes.labels.shape[2:] == volumes.geometry.shape
    assert all(n % 16 == 0 for n in volumes.geometry.size) and np.allclose(volumes.geometry.direction, np.eye(3))
    assert float(t1.min()) >= 0 and float(t1.max()) <= 1 and float(t1.max()) > 0.9
    # nothing left beyond one voxel of the label mask, and the crop keeps the whole brain
    near = torch.nn.functional.max_pool3d((volumes.labels > 0).float(), 3, stride=1, padding=1)
    assert float(t1[near == 0].abs().max()) == 0.0
    for axis in (2, 3, 4):
        assert volumes.mask.narrow(axis, 0, 1).sum() == 0 and volumes.mask.narrow(axis, -1, 1).sum() == 0


def test_contrasts_only_roughly_aligned_are_registered_to_the_first_one(tmp_path, stroke):
    """A second image whose header puts it 3 mm off (the image moved, as aurora-met's contrasts are
    ~1.9 mm apart) lands back on the first with ``align_contrasts``, and stays off without it.  The
    second image is a copy of the T1 so that the affine found is exact (between contrasts it has
    a ~1 % scaling of its own)."""
    from dataclasses import replace

    brain = stroke["T1"].with_array((stroke["T1"].array > 20).astype(np.uint8))  # one crop box for both subjects
    for subject in ("s1", "s2"):
        (tmp_path / subject).mkdir()
        write_image(stroke["T1"], tmp_path / subject / "T1.nii.gz")
        write_image(brain, tmp_path / subject / "labels.nii.gz")
    moved = replace(stroke["T1"].geometry, origin=tuple(np.add(stroke["T1"].geometry.origin, (0.0, 3.0, 0.0))))
    write_image(Image(stroke["T1"].array, moved), tmp_path / "s1" / "T1_copy.nii.gz")
    write_image(stroke["T1"], tmp_path / "s2" / "T1_copy.nii.gz")
    shifted, aligned_copy = read_cohort(tmp_path).subjects
    reference = load_subject(aligned_copy, 4.0, 8.0)
    off, back = load_subject(shifted, 4.0, 8.0), load_subject(shifted, 4.0, 8.0, align_contrasts=True)
    assert off.geometry == back.geometry == reference.geometry
    # 1 - correlation (the copy on another grid than the labels is normalised over its whole image);
    # aligned, what is left is the second resampling's blur (measured 0.0016 against 0.015 off)
    error = lambda volumes: 1 - float(torch.corrcoef(torch.stack(  # noqa: E731
        [volumes.images["t1_copy"].flatten(), reference.images["t1_copy"].flatten()]))[0, 1])
    assert error(back) < 0.2 * error(off)
