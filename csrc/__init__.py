"""The C++/CUDA sources of the extension ``fastflow._C``, installed with the package so that it can be
built just in time (``fastflow/ops/_extension.py``); the build settings are ``fastflow/_build.py``."""
