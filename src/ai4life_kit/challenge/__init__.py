"""AI4Life denoising challenge (Grand Challenge) submissions.

- :mod:`~ai4life_kit.challenge.contract`: track names, folders, output rules, output checks.
- :mod:`~ai4life_kit.challenge.runner`: the in-container entry point (``ai4life-kit challenge run``).
- :mod:`~ai4life_kit.challenge.context`: renders a self-explaining build context from a model zip.
- :mod:`~ai4life_kit.challenge.deps`: the image's pinned dependencies and the local torch CPU wheel.
- :mod:`~ai4life_kit.challenge.kitwheel`: the kit itself as a wheel for the image.
- :mod:`~ai4life_kit.challenge.engine`: docker or podman (set up to run without a daemon or registry).
- :mod:`~ai4life_kit.challenge.base_image`: the image to build on (bootstrapped from Debian packages
  when no registry can be reached).
- :mod:`~ai4life_kit.challenge.ctest`: builds the image and runs it the way Grand Challenge does.
- :mod:`~ai4life_kit.challenge.save`: exports the image as ``<name>.tar.gz`` and verifies the archive.

Importing this package is cheap; torch is imported only when a model is loaded.
"""

__all__: list[str] = []
