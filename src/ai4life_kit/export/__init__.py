"""bioimage.io packaging: build a tested model zip from a run directory, validate any model zip.

The only part of ai4life-kit that imports ``bioimageio.*`` (always inside functions, so that
importing this package stays cheap). Reading our zips back for prediction needs no bioimageio:
see :mod:`ai4life_kit.prediction.package_loader`.
"""

from ai4life_kit.export.build import PackageResult, build_model_descr, package_run
from ai4life_kit.export.rundir import RunInfo, load_run
from ai4life_kit.export.validate import (
    Check,
    TestReport,
    check_format,
    inspect_zip,
    run_package_test,
)

__all__ = [
    "Check",
    "PackageResult",
    "RunInfo",
    "TestReport",
    "build_model_descr",
    "inspect_zip",
    "check_format",
    "load_run",
    "package_run",
    "run_package_test",
]
