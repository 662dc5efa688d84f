"""Small scenes with known answers for the modules' self-tests and the tests run on
slicer-core.  Not installed with the extension (test code only; see the module's CMakeLists)."""
