"""Check and test bioimage.io model zips, and say readably which check failed and why.

- :func:`inspect_zip` rejects what is not a model package (missing file, corrupt zip, no rdf,
  not a model) with a :class:`ModelLoadError` before bioimageio is even imported.
- :func:`check_format` is ``bioimageio validate-format``.
- :func:`run_package_test` is ``bioimageio test`` in this process (current stack); the consumers'
  own runtimes (ilastik's, the BioEngine's, deepImageJ's engines) are in
  :mod:`ai4life_kit.export.consumers`.

GitHub user names found in the rdf are registered as known first, so that no test needs the
network (bioimageio.spec would otherwise look each unknown name up on api.github.com).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ai4life_kit.export._testrun import collect_leaked_files, register_github_users
from ai4life_kit.package_rdf import check_members, open_model_zip, read_rdf

__all__ = [
    "Check",
    "TestReport",
    "inspect_zip",
    "check_format",
    "run_package_test",
]

_INFO = 20  # bioimageio.spec warning severity "info"


@dataclass
class Check:
    """One entry of a bioimageio validation summary."""

    name: str
    status: str
    loc: str = ""
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return self.status == "failed"


@dataclass
class TestReport:
    """Readable result of ``bioimageio test`` on one zip."""

    __test__ = False  # not a pytest test class

    source: str
    status: str
    name: str = ""
    format_version: str = ""
    """The format version bioimageio read the rdf as (after converting it)."""
    rdf_format_version: str = ""
    """The ``format_version`` written in the rdf."""
    stack: dict[str, str] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    error: str | None = None
    """Set when the test itself crashed (then ``checks`` may be empty)."""

    @property
    def passed(self) -> bool:
        """Only ``"passed"`` counts: a failed reproduction leaves the status at ``"valid-format"``."""
        return self.status == "passed" and self.error is None

    @property
    def failed_checks(self) -> list[Check]:
        return [c for c in self.checks if c.failed]

    @property
    def warnings(self) -> list[str]:
        return [f"{c.name}: {w}" for c in self.checks for w in c.warnings]

    def one_line(self) -> str:
        """The first failing check and its reason on one line (for error messages)."""
        if self.error:
            return f"the test crashed: {self.error}"
        failed = self.failed_checks
        if not failed:
            if self.passed:
                return "passed"
            return f"status {self.status!r}"
        first = failed[0]
        reason = _short_reason(first.errors[0]) if first.errors else "no reason given"
        more = f" (+{len(failed) - 1} more failed check{'s' if len(failed) > 2 else ''})" if len(failed) > 1 else ""
        return f"check '{first.name}' failed: {reason}{more}"

    def format(self, verbose: bool = False) -> str:
        """Multi-line summary: status, stack, each failed check with its reasons, warnings."""
        stack = ", ".join(f"{k} {v}" for k, v in self.stack.items())
        verdict = "PASSED" if self.passed else "FAILED"
        lines = [f"{verdict}: {self.name or self.source} ({self.source})"]
        if self.format_version:
            fv = self.rdf_format_version or self.format_version
            if self.rdf_format_version and self.rdf_format_version != self.format_version:
                fv += f" (read as {self.format_version})"
            lines.append(f"  format version {fv}" + (f"; tested with {stack}" if stack else ""))
        if self.error:
            lines.append(f"  the test crashed: {self.error}")
        n_ok = sum(1 for c in self.checks if c.status == "passed")
        lines.append(f"  {n_ok} of {len(self.checks)} checks passed")
        for c in self.checks:
            if c.failed:
                lines.append(f"  x {c.name}" + (f" [{c.loc}]" if c.loc else ""))
                for e in c.errors:
                    for i, part in enumerate(e.splitlines()):
                        lines.append(("      - " if i == 0 else "        ") + part)
            elif verbose:
                lines.append(f"  v {c.name}")
        warnings = self.warnings
        if warnings:
            lines.append(f"  {len(warnings)} warning(s):")
            lines += [f"      ! {w}" for w in warnings]
        return "\n".join(lines)

    @classmethod
    def from_dict(cls, source: str, data: dict[str, Any]) -> TestReport:
        checks = [
            Check(
                name=c.get("name", ""),
                status=c.get("status", ""),
                loc=c.get("loc", ""),
                errors=[
                    (f"{e['loc']}: " if e.get("loc") and e["loc"] != c.get("loc") else "") + e["msg"]
                    for e in c.get("errors", [])
                ],
                # severity 20 ("info") entries restate passing numbers; keep warnings and alerts
                warnings=[
                    (f"{w['loc']}: " if w.get("loc") else "") + w["msg"]
                    for w in c.get("warnings", [])
                    if int(w.get("severity", 30)) > _INFO
                ],
            )
            for c in data.get("checks", [])
        ]
        return cls(
            source=source,
            status=data.get("status", "failed"),
            name=data.get("name", ""),
            format_version=data.get("format_version", ""),
            rdf_format_version=data.get("rdf_format_version", ""),
            stack=dict(data.get("stack", {})),
            checks=checks,
            error=data.get("error"),
        )


def _short_reason(error: str) -> str:
    """First line of an error plus, for reproduction failures, the largest absolute difference."""
    lines = [line.strip() for line in error.splitlines() if line.strip()]
    reason = lines[0] if lines else error
    for i, line in enumerate(lines[:-1]):
        if line.startswith("Max absolute difference"):
            reason += f" Max absolute difference: {lines[i + 1]}"
            break
    return reason


def inspect_zip(path: Path) -> dict[str, Any]:
    """Open a model zip without bioimageio; return its parsed rdf or raise :class:`ModelLoadError`.

    Every member's CRC is checked too: a damaged download is named here, before bioimageio runs.
    """
    path = Path(path)
    with open_model_zip(path) as zf:
        check_members(zf, path)
        return read_rdf(zf, path)


def github_users_in(rdf: dict[str, Any]) -> list[str]:
    """Every ``github_user`` named by authors, maintainers, packagers, uploader."""
    users: list[str] = []
    people: list[Any] = []
    for key in ("authors", "maintainers", "packaged_by"):
        if isinstance(rdf.get(key), list):
            people += rdf[key]
    if isinstance(rdf.get("uploader"), dict):
        people.append(rdf["uploader"])
    weights = rdf.get("weights")
    if isinstance(weights, dict):
        for w in weights.values():
            if isinstance(w, dict) and isinstance(w.get("authors"), list):
                people += w["authors"]
    for p in people:
        if isinstance(p, dict) and isinstance(p.get("github_user"), str):
            users.append(p["github_user"])
    return users


def check_format(path: Path, extra_github_users: list[str] = ()) -> TestReport:  # type: ignore[assignment]
    """``bioimageio validate-format`` (with io checks): a report whose warnings exclude "info" notes.

    ``passed`` is true when the format is valid (bioimageio's status ``"valid-format"``).
    """
    from bioimageio.spec import load_description
    from loguru import logger

    from ai4life_kit.export._testrun import summary_to_dict

    rdf = inspect_zip(path)
    register_github_users([*github_users_in(rdf), *extra_github_users])
    logger.disable("bioimageio")
    try:
        with collect_leaked_files():
            descr = load_description(Path(path), perform_io_checks=True)
            data = summary_to_dict(descr.validation_summary)
            del descr  # it holds the open zip: release it while leaks are collected
    finally:
        logger.enable("bioimageio")
    data["name"] = str(rdf.get("name", ""))
    data["rdf_format_version"] = str(rdf.get("format_version", ""))
    if data["status"] == "valid-format":
        data["status"] = "passed"
    return TestReport.from_dict(str(path), data)


def run_package_test(path: Path, extra_github_users: list[str] = (), weight_format: str | None = None) -> TestReport:  # type: ignore[assignment]
    """``bioimageio test`` with the bioimageio.core of this environment."""
    from ai4life_kit.export._testrun import run_test_on_zip

    rdf = inspect_zip(path)
    users = [*github_users_in(rdf), *extra_github_users]
    try:
        data = run_test_on_zip(str(path), users, weight_format)
    except Exception as exc:  # bioimageio.core should return a summary, but do not lose the reason
        data = {"status": "crashed", "error": f"{type(exc).__name__}: {exc}", "checks": []}
    data["name"] = str(rdf.get("name", ""))
    data["rdf_format_version"] = str(rdf.get("format_version", ""))
    return TestReport.from_dict(str(path), data)
