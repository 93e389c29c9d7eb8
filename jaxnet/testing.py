"""Parity as an assertion, for a port's own test suite.

    from jaxnet.testing import assert_parity

    def test_port_matches_torch():
        assert_parity("tests/reference/net", Port(nnx.Rngs(0)))   # a recorded reference: no torch

``assert_parity(report)`` raises :class:`AssertionError` whose message reads like
``torch.testing.assert_close``'s: what differs where (the first failing row and its
diagnosis), the failing rows with their err, floor, bound and ratio, and the path of the
full report (JSON) written for the CI's artifacts.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from jaxnet.parity.report import Report, write_json

MAX_ROWS = 8  # failing rows listed in the message; the full report holds them all


def assert_parity(
    report_or_reference, port=None, *, report_dir: str | Path | None = None, **compare_kwargs
) -> Report:
    """Raise AssertionError unless every row of the comparison is within its bound.

    Args:
        report_or_reference: a :class:`~jaxnet.parity.report.Report`; or a torch module or the
            path of a recorded reference, compared with ``port`` by :func:`jaxnet.parity.compare`
            (``compare_kwargs`` passed on).
        port: the NNX module, where a comparison is to be run.
        report_dir: where the full report is written on failure (default: ``$JAXNET_REPORT_DIR``
            or the system's temporary directory).

    Returns:
        The report, when it passed.
    """
    report = report_or_reference
    if not isinstance(report, Report):
        from jaxnet import parity

        args = (
            ()
            if isinstance(report, str | Path)
            else (compare_kwargs.pop("inputs"), compare_kwargs.pop("targets"))
        )
        report = parity.compare(report_or_reference, port, *args, **compare_kwargs)
    if report.passed:
        return report
    where = Path(report_dir or os.environ.get("JAXNET_REPORT_DIR") or tempfile.gettempdir())
    where.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkstemp(prefix="parity-", suffix=".json", dir=where)[1])
    write_json(report, path)
    failures = report.failures
    first = failures[0]
    lines = [
        f"Parity failed: {len(failures)} of {len(report.rows)} rows beyond their bounds (K x measured floor).",
        f"First difference: {first.section} / {first.quantity} ({first.dtype}): "
        f"err {first.err:.3g} > bound {first.bound:.3g} ({first.ratio:.3g}x).",
        f"Diagnosis: {report.environment.get('first difference', '-')}",
        "Failing rows (section | quantity | dtype | err | floor | bound | ratio):",
    ]
    for r in failures[:MAX_ROWS]:
        lines.append(
            f"  {r.section} | {r.quantity} | {r.dtype} | {r.err:.3g} | {r.floor:.3g} | {r.bound:.3g} | {r.ratio:.3g}"
        )
    if len(failures) > MAX_ROWS:
        lines.append(f"  ... and {len(failures) - MAX_ROWS} more")
    if "machines differ" in report.environment:
        lines.append(f"Note: machines differ: {report.environment['machines differ']}")
    lines.append(f"Full report: {path}")
    raise AssertionError("\n".join(lines))
