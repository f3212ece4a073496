"""Not setuptools: a stand-in that scripts/setup.sh puts first on PYTHONPATH (see build_meta)."""
