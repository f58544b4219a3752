"""Run h2spec (the HTTP/2 conformance suite) and read its JUnit report, for the conformance tests.

h2spec lives in ../shared/tools (see its README there); where it is missing the tests skip with
the reason, except in CI (the ``CI`` environment variable set), where they fail.
"""

from __future__ import annotations

import os
import subprocess
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests._h2client import H2SPEC


@dataclass
class H2specResult:
    passed: list[str]
    failed: list[str]
    skipped: list[str]
    output: str

    @property
    def summary(self) -> str:
        passed, skipped, failed = len(self.passed), len(self.skipped), len(self.failed)
        return f"{passed + skipped + failed} tests, {passed} passed, {skipped} skipped, {failed} failed"


def require_h2spec() -> Path:
    if H2SPEC.is_file() and os.access(H2SPEC, os.X_OK):
        return H2SPEC
    reason = f"h2spec not found at {H2SPEC} (../shared/tools/README.md says where it comes from)"
    if os.environ.get("CI"):
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def run_h2spec(port: int, report: Path, tls: bool = False, timeout_s: int = 3) -> H2specResult:
    """Every h2spec test against 127.0.0.1:port; ids as h2spec names them (http2/5.1.1/2)."""
    cmd = [str(require_h2spec()), "-h", "127.0.0.1", "-p", str(port), "-o", str(timeout_s), "-j", str(report)]
    if tls:
        cmd += ["-t", "-k"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    result = H2specResult([], [], [], proc.stdout[-6000:] + proc.stderr[-2000:])
    for suite in ET.parse(report).getroot().iter("testsuite"):
        package = suite.get("package", "")
        for index, case in enumerate(suite.iter("testcase"), start=1):
            test_id = f"{package}/{index}"
            if case.find("skipped") is not None:
                result.skipped.append(test_id)
            elif case.find("failure") is not None or case.find("error") is not None:
                result.failed.append(test_id)
            else:
                result.passed.append(test_id)
    return result
