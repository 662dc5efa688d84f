"""What the extension says about itself, in one place: where its documentation is, who made it,
the papers its methods implement and the data it bundles.  The four modules' help and
acknowledgement texts are made here, and the extension's CMake metadata (homepage,
contributors) and catalog entry (``DeepMultiModalReg.json``) must agree with it
(``Testing/Python/test_extension_catalog.py``).  No Qt, no Slicer.
"""

from __future__ import annotations

from dataclasses import dataclass

HOMEPAGE = "https://github.com/DeepMultiModalReg/SlicerDeepMultiModalReg"
DOCUMENTATION_URL = f"{HOMEPAGE}#readme"
ISSUES_URL = f"{HOMEPAGE}/issues"
#: "Name (Affiliation)" entries, as Slicer's catalog expects; the same in ``CMakeLists.txt``.
CONTRIBUTORS = ("DeepMultiModalReg developers (DeepMultiModalReg project)",)


@dataclass(frozen=True)
class Citation:
    """One paper a method implements (``paper``: its file in ``../shared/papers``).
    ``doi``: where the publisher's page confirms it (the papers' text copies give none)."""

    method: str
    paper: str
    authors: str
    title: str
    venue: str
    year: int
    doi: str | None = None

    def text(self) -> str:
        doi = f" doi:{self.doi}." if self.doi else ""
        return f"{self.authors}. {self.title}. {self.venue}, {self.year}.{doi}"


CITATIONS = (
    Citation("fire", "000_9877b33c2dcaa129.txt", "C. Wang, G. Yang, G. Papanastasiou",
             "Unsupervised image registration towards enhancing performance and explainability in cardiac "
             "and brain image analysis (FIRE)", "Sensors 22(6):2125", 2022, "10.3390/s22062125"),
    Citation("variational", "001_bc0de2fc45dae677.txt", "A. Theljani, K. Chen",
             "An unsupervised deep learning method for diffeomorphic mono- and multi-modal image registration",
             "Journal of Algorithms & Computational Technology 14", 2020, "10.1177/1748302620973528"),
    Citation("disentangled", "002_0584f023bf238d80.txt", "J. Wu, S. Zhou",
             "A disentangled representations based unsupervised deformable framework for cross-modality image "
             "registration", "43rd Annual International Conference of the IEEE EMBC", 2021),
    Citation("midir", "003_2f2aa96e65959a3c.txt", "H. Qiu, C. Qin, A. Schuh, K. Hammernik, D. Rueckert",
             "Learning diffeomorphic and modality-invariant registration using B-splines",
             "Medical Imaging with Deep Learning (MIDL), PMLR 143", 2021),
    Citation("hierarchical", "004_b2c378d3610a3326.txt", "X. Dai, T. Ma, H. Cai, Y. Wen",
             "Unsupervised hierarchical translation-based model for multi-modal medical image registration",
             "IEEE International Symposium on Biomedical Imaging (ISBI)", 2022),
)

DATA_ACKNOWLEDGEMENT = (
    "Sample data: 3T MRI (T1, T2, FLAIR) of an individual with chronic stroke from "
    "neurolabusc/VolumeRenderingData (MIT licence, Copyright (c) 2020 Chris Rorden); data from the Center "
    "for the Study of Aphasia Recovery (C-STAR), NIH supported project P50 DC014664."
)


def help_text(summary: str) -> str:
    """A module's help: ``summary``, then the documentation link (HTML, as Slicer shows it)."""
    return (f"{summary}<br><br>Documentation: <a href=\"{DOCUMENTATION_URL}\">{DOCUMENTATION_URL}</a>. "
            f"Problems and questions: <a href=\"{ISSUES_URL}\">{ISSUES_URL}</a>.")


def acknowledgement_text() -> str:
    """The modules' acknowledgement: the papers the methods implement, and the bundled data."""
    papers = "".join(f"<li>{citation.method}: {citation.text()}</li>" for citation in CITATIONS)
    return (f"The learned methods implement these papers; cite the one you use:<ul>{papers}</ul>"
            f"The optimise method uses MIDIR's NMI and B-spline velocity field (Qiu et al., 2021). "
            f"{DATA_ACKNOWLEDGEMENT}")


def sample_data_folder(module_folder=None):
    """The bundled stroke T1/T2/FLAIR (``Path``, or ``None`` when missing): in the module folder's
    ``Resources/SampleData/stroke`` (where CMake puts it in the build tree and once installed),
    or at the source tree's root.  ``module_folder``: the folder holding ``dmmreg`` (default:
    this one's)."""
    from pathlib import Path

    module_folder = Path(module_folder or Path(__file__).resolve().parents[2])
    for folder in (module_folder / "Resources" / "SampleData" / "stroke",
                   module_folder.parent / "Resources" / "SampleData" / "stroke"):
        if (folder / "T1.nii.gz").exists():
            return folder
    return None
