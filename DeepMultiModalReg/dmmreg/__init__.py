"""DeepMultiModalReg backend: multi-modal MRI registration in physical space.

Importable without Slicer.  Entry points: :func:`dmmreg.registration.register_pair` and the
``dmmreg`` command line (``python -m dmmreg``).
"""

__version__ = "0.1.0"
