"""Parity between a PyTorch model and its JAX port, judged against measured noise floors.

    from jaxnet import data, parity
    report = parity.run(data.load(), dtypes=("float32",), steps=20)
    parity.print_table(report)
    assert report.passed

``run`` is the tutorial MLP's report (``jaxnet parity``); ``training`` compares any recipe's
steps on any batches; ``forward`` one batch's outputs and gradients. The verdict machinery
(:mod:`~jaxnet.parity.verdict`: floors and bounds; :mod:`~jaxnet.parity.forced` and
:mod:`~jaxnet.parity.free`: teacher-forced and free-running steps) works on any pair of
:class:`~jaxnet.backends.Backend`. Call ``jaxnet.process.prepare(shared=True)`` before torch
is first imported, so that the two frameworks' threads do not spin against each other.
"""

from jaxnet.parity.builtin import forward, run, training
from jaxnet.parity.port import compare
from jaxnet.parity.recorded import record
from jaxnet.parity.report import Report, Row, markdown, plot, print_table, summary, write_json
from jaxnet.parity.verdict import K

__all__ = [
    "K",
    "Report",
    "Row",
    "compare",
    "forward",
    "markdown",
    "plot",
    "print_table",
    "record",
    "run",
    "summary",
    "training",
    "write_json",
]
