"""A PEP 517 metadata hook that runs no code of the package (scripts/setup.sh).

`pip download` of an sdist prepares its metadata through the build backend. For an sdist
without pyproject.toml that is `setuptools.build_meta:__legacy__`, which executes setup.py, and
with build isolation pip first installs setuptools and wheel from the index without checking
any hash. setup.sh runs pip with --no-build-isolation and this directory first on PYTHONPATH,
so the "backend" is this file: it copies the sdist's PKG-INFO into a .dist-info and nothing
else. pip has checked the archive's --hash before it calls a hook, and no code from the
archive, nor any unpinned build tool, ever runs.
"""

import email.parser
import os


class _MetadataOnly:
    @staticmethod
    def get_requires_for_build_wheel(config_settings=None):
        return []

    @staticmethod
    def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
        # pip calls the hook in the unpacked sdist's directory.
        with open("PKG-INFO", encoding="utf-8") as f:
            text = f.read()
        info = email.parser.Parser().parsestr(text, headersonly=True)
        name, version = info["Name"], info["Version"]
        if not name or not version:
            raise RuntimeError("PKG-INFO lacks Name or Version")
        dist_info = "{}-{}.dist-info".format(name.replace("-", "_"), version)
        os.makedirs(os.path.join(metadata_directory, dist_info))
        with open(os.path.join(metadata_directory, dist_info, "METADATA"), "w", encoding="utf-8") as f:
            f.write(text)
        return dist_info

    @staticmethod
    def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
        raise RuntimeError("scripts/setup.sh only downloads; it never builds a package")


__legacy__ = _MetadataOnly()
