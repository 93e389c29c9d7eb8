"""Parity between a PyTorch model and its JAX port, judged against measured noise floors.

    from jaxnet import data, parity
    report = parity.run(data.load(), dtypes=("float32",), steps=20)
    parity.print_table(report)
    assert report.passed

``run`` is the tutorial MLP's report (``jaxnet parity``). The verdict machinery
(:mod:`~jaxnet.parity.verdict`: floors and bounds; :mod:`~jaxnet.parity.steps`: teacher-forced
and free-running steps) works on any pair of :class:`~jaxnet.backends.Backend`.
"""

from jaxnet.parity.mlp import forward, run, training
from jaxnet.parity.report import Report, Row, markdown, plot, print_table, summary, write_json
from jaxnet.parity.verdict import K

__all__ = [
    "K",
    "Report",
    "Row",
    "forward",
    "markdown",
    "plot",
    "print_table",
    "run",
    "summary",
    "training",
    "write_json",
]
