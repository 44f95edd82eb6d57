"""Run ``bioimageio.core``'s model test and summarise it as plain JSON-able data.

This module imports nothing of ai4life-kit and ``bioimageio`` only inside functions, and uses
nothing but the attributes that every bioimageio.core 0.10 / 0.11 summary has: the consumer
probes (:mod:`ai4life_kit.export._consumer_probe`) load it by path inside other runtimes (the
BioEngine's bioimageio.core 0.10.4, ilastik's 0.10.2). As a script,

    python -m ai4life_kit.export._testrun MODEL.zip [--github-user NAME ...]

prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import re
import sys
import warnings
from typing import Any

__all__ = ["summary_to_dict", "run_test_on_zip", "main", "collect_leaked_files", "register_github_users"]


@contextlib.contextmanager
def collect_leaked_files():
    """Close the file handles bioimageio.spec leaves open (it opens every file it hashes).

    bioimageio.spec 0.5.12 reads package files through readers it never closes; the handles are
    released by the garbage collector with a ``ResourceWarning`` each. Collect them here, with
    that warning silenced, instead of at some random later point in the caller's code.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        try:
            yield
        finally:
            gc.collect()


def _loc(loc: Any) -> str:
    try:
        return ".".join(str(p) for p in loc)
    except TypeError:
        return str(loc)


def _clean(msg: Any) -> str:
    """bioimageio.core's messages without markdown escapes (``\\|``) and numpy reprs (``np.int64(3)``)."""
    text = str(msg).replace("\\|", "|")
    text = re.sub(r"np\.(?:int|uint|float)\d*\(([^()]*)\)", r"\1", text)
    text = re.sub(r"'(batch|channel|z|y|x)': ", r"\1=", text)
    return "\n".join(line.rstrip() for line in text.strip().splitlines())


def _severity(entry: Any) -> int:
    value = getattr(entry, "severity", 30)
    try:
        return int(value)
    except (TypeError, ValueError):
        return 30


def summary_to_dict(summary: Any) -> dict[str, Any]:
    """A ``ValidationSummary`` as a dict: status, versions, every check with errors and warnings."""
    checks = []
    for d in getattr(summary, "details", []):
        checks.append(
            {
                "name": str(getattr(d, "name", "")),
                "status": str(getattr(d, "status", "")),
                "loc": _loc(getattr(d, "loc", ())),
                "errors": [{"loc": _loc(e.loc), "msg": _clean(e.msg)} for e in getattr(d, "errors", [])],
                "warnings": [
                    {"loc": _loc(w.loc), "msg": _clean(w.msg), "severity": _severity(w)}
                    for w in getattr(d, "warnings", [])
                ],
            }
        )
    env = []
    for pkg in getattr(summary, "env", []) or []:
        try:
            env.append(f"{pkg.name}=={pkg.version}")
        except AttributeError:
            env.append(str(pkg))
    return {
        "status": str(summary.status),
        "name": str(getattr(summary, "name", "")),
        "source_name": str(getattr(summary, "source_name", "")),
        "format_version": str(getattr(summary, "format_version", "")),
        "type": str(getattr(summary, "type", "")),
        "env": sorted(env),
        "checks": checks,
    }


def register_github_users(names: list[str]) -> None:
    """Mark GitHub user names as known so that bioimageio.spec does not look them up online.

    bioimageio.spec checks unknown ``github_user`` names against api.github.com whenever it
    performs io checks (always, in ``test_model``); offline that fails the whole test with
    "Name or service not known". We never want packaging or testing to need the network.
    """
    try:
        from bioimageio.spec._internal import field_validation
    except ImportError:  # pragma: no cover
        return
    known = getattr(field_validation, "KNOWN_GITHUB_USERS", None)
    if isinstance(known, set):
        known.update(n.lower() for n in names if n)


def run_test_on_zip(path: str, github_users: list[str] = (), weight_format: str | None = None) -> dict[str, Any]:  # type: ignore[assignment]
    """Run ``bioimageio.core.test_model`` on ``path`` (quietly) and return :func:`summary_to_dict`."""
    from loguru import logger

    register_github_users(list(github_users))
    logger.disable("bioimageio")
    try:
        from bioimageio.core import test_model

        sink = io.StringIO()
        with collect_leaked_files(), warnings.catch_warnings(), contextlib.redirect_stdout(sink):
            warnings.simplefilter("ignore")
            kwargs: dict[str, Any] = {}
            if weight_format:
                kwargs["weight_format"] = weight_format
            summary = test_model(path, **kwargs)
    finally:
        logger.enable("bioimageio")
    result = summary_to_dict(summary)
    try:
        import bioimageio.core
        import bioimageio.spec

        result["stack"] = {
            "bioimageio.core": bioimageio.core.__version__,
            "bioimageio.spec": bioimageio.spec.__version__,
        }
    except (ImportError, AttributeError):  # pragma: no cover
        pass
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("zip")
    parser.add_argument("--github-user", action="append", default=[])
    parser.add_argument("--weight-format", default=None)
    args = parser.parse_args(argv)
    try:
        result = run_test_on_zip(args.zip, args.github_user, args.weight_format)
    except Exception as exc:  # report crashes as data, the caller formats them
        result = {"status": "crashed", "error": f"{type(exc).__name__}: {exc}", "checks": []}
    sys.stdout.write("\n@@AI4LIFE_KIT_RESULT@@" + json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
