"""mlpi: one MLPerf Inference harness for every accelerator.

Importing mlpi imports no runtime: backends import theirs when they load a model.
"""

__version__ = "0.1.0"
