"""The optional C listing for ``status`` (``assetcache/_walk.c``).

Everything else is in pyproject.toml. The extension is optional: where it
cannot be built (no compiler, not POSIX) the install goes on without it and
``status`` uses its pure-Python listing, with the same results.
"""

import os

from setuptools import Extension, setup

setup(
    ext_modules=(
        [Extension("assetcache._walk", ["assetcache/_walk.c"], optional=True)]
        if os.name == "posix" and not os.environ.get("ASSETCACHE_PURE_PYTHON")
        else []
    )
)
