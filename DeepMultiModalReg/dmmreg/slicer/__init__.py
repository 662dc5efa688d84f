"""The Slicer side: the MRML bridge, the background process, the modules' logic (one file per
module) and their widgets' shared code.

Needs slicer-core (the MRML scene and nodes; the Qt widget code also Slicer's ``qt``).  Imports
the backend and training; neither of them imports this package.
"""
