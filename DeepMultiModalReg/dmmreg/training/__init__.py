"""Training: cohorts, training pairs with known warps, augmentation, the shared trainer, jobs
and validation through the whole registration.

Imports the backend (``dmmreg``), never the Slicer side (``dmmreg.slicer``); needs torch.
"""
