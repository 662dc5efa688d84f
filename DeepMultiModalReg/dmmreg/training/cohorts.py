"""Training cohorts: subjects, their contrasts (image files), optional label maps and masks.

Two layouts are read by :func:`read_cohort`:

* a folder with one sub-folder per subject, each holding one image per contrast named by the
  contrast (``sub01/T1.nii.gz``, ``sub01/FLAIR.nrrd``) and optionally ``labels.*`` and ``mask.*``;
* a CSV file with a ``subject`` column, one column per contrast, and optional ``labels`` and
  ``mask`` columns; an empty cell means the subject lacks that image; relative paths are
  relative to the CSV file's folder.

Contrast names are compared case-insensitively (``t2`` and ``T2`` are one contrast).  The images
of one subject must be aligned in physical space (they may have different grids); a label map
must lie on the grid of the subject's images.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
RESERVED = ("labels", "mask")


@dataclass(frozen=True)
class Subject:
    """One subject: ``images`` maps a contrast name (lower case) to an image file."""

    name: str
    images: dict[str, Path]
    labels: Path | None = None
    mask: Path | None = None


@dataclass
class Cohort:
    subjects: list[Subject]
    source: str = ""
    #: contrast names as first written in the cohort (lower case -> original), for messages
    spelling: dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.subjects)

    @property
    def contrasts(self) -> list[str]:
        """Every contrast of the cohort (lower case), in first-seen order."""
        return list(dict.fromkeys(c for s in self.subjects for c in s.images))

    def with_contrasts(self, contrasts: list[str] | None, minimum: int = 1) -> "Cohort":
        """The subjects that have every contrast of ``contrasts`` (all subjects when None),
        keeping only those contrasts; an error names the subjects that lack one."""
        if not contrasts:
            return self
        wanted = [c.lower() for c in contrasts]
        unknown = [c for c in wanted if c not in self.contrasts]
        if unknown:
            raise InputError(f"cohort {self.source} has no {', '.join(unknown)} images (it has "
                             f"{', '.join(self.spelling.get(c, c) for c in self.contrasts)}); choose contrasts it has")
        keep = [Subject(s.name, {c: s.images[c] for c in wanted}, s.labels, s.mask)
                for s in self.subjects if all(c in s.images for c in wanted)]
        lacking = [s.name for s in self.subjects if not all(c in s.images for c in wanted)]
        if len(keep) < minimum:
            raise InputError(f"only {len(keep)} subject(s) of cohort {self.source} have all of {', '.join(contrasts)} "
                             f"(lacking: {', '.join(lacking[:5])}{' ...' if len(lacking) > 5 else ''}); need {minimum}")
        return Cohort(keep, self.source, self.spelling)

    def split(self, validation: list[str]) -> tuple["Cohort", "Cohort"]:
        """``(training, validation)``: the subjects named in ``validation`` are held out."""
        names = {s.name for s in self.subjects}
        missing = sorted(set(validation) - names)
        if missing:
            raise InputError(f"validation subjects {', '.join(missing)} are not in cohort {self.source}")
        held = set(validation)
        return (Cohort([s for s in self.subjects if s.name not in held], self.source, self.spelling),
                Cohort([s for s in self.subjects if s.name in held], self.source, self.spelling))


def _stem(path: Path) -> str:
    name = path.name
    for suffix in IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return ""


def _check_file(path: Path, subject: str, what: str) -> Path:
    if not path.is_file():
        raise InputError(f"{what} of subject {subject!r} not found: {path}; fix the path in the cohort")
    return path


def _subject(name: str, entries: dict[str, Path], spelling: dict[str, str]) -> Subject:
    images, labels, mask = {}, None, None
    for key, path in entries.items():
        lower = key.lower()
        if lower == "labels":
            labels = _check_file(path, name, "label map")
        elif lower == "mask":
            mask = _check_file(path, name, "mask")
        else:
            if lower in images:
                raise InputError(f"subject {name!r} has two {key} images ({images[lower]}, {path}); keep one")
            images[lower] = _check_file(path, name, f"{key} image")
            spelling.setdefault(lower, key)
    if not images:
        raise InputError(f"subject {name!r} has no images (only {', '.join(entries) or 'nothing'})")
    return Subject(name, images, labels, mask)


def read_cohort(path: str | Path) -> Cohort:
    """The cohort at ``path`` (a folder or a CSV file; see the module docstring)."""
    path = Path(path)
    spelling: dict[str, str] = {}
    if path.is_dir():
        subjects = []
        for folder in sorted(p for p in path.iterdir() if p.is_dir()):
            entries = {_stem(f): f for f in sorted(folder.iterdir()) if f.is_file() and _stem(f)}
            if entries:
                subjects.append(_subject(folder.name, entries, spelling))
        if not subjects:
            raise InputError(f"cohort folder {path} has no subject folders with images (expected "
                             f"{path}/SUBJECT/CONTRAST.nii.gz); see `dmmreg train --help`")
    elif path.is_file() and path.suffix.lower() == ".csv":
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
        if not rows or "subject" not in (rows[0].keys()):
            raise InputError(f"cohort CSV {path} needs a header with a 'subject' column and one column per contrast")
        subjects, seen = [], set()
        for number, row in enumerate(rows, start=2):
            name = (row.pop("subject") or "").strip()
            if not name:
                raise InputError(f"cohort CSV {path}, line {number}: empty subject name")
            if name in seen:
                raise InputError(f"cohort CSV {path}, line {number}: subject {name!r} is listed twice")
            seen.add(name)
            entries = {key.strip(): (path.parent / value.strip()) for key, value in row.items()
                       if key and value and value.strip()}
            subjects.append(_subject(name, entries, spelling))
    else:
        raise InputError(f"cohort {path} is neither a folder nor a .csv file")
    return Cohort(subjects, str(path), spelling)
