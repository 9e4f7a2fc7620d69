"""The captioning runtime: pure Python + numpy, identical in CPython and Pyodide.

Host-specific code (native onnxruntime, onnxruntime-web through Pyodide's FFI)
lives behind :class:`lfmvl_site.runtime.backend.Backend`.
"""
