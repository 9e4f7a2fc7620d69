"""lfmvl-site: ship LFM2.5-VL-1.6B as a static, in-browser webcam captioner.

Importing this package must stay cheap and dependency-free: the same tree is
loaded inside Pyodide, where only numpy and jinja2 exist.
"""

__version__ = "0.1.0"
