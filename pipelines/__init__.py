"""flux2-edit engines: the ``EditEngine`` protocol, the FLUX.2 engine and a fake for tests.

Importing this package (or :mod:`pipelines.protocol`, :mod:`pipelines.sizes`,
:mod:`pipelines.schedules`, :mod:`pipelines.fake`) does not import torch; only
:mod:`pipelines.flux2` does.
"""
