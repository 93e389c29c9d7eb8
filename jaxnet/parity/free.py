"""Free-running trajectories: each framework follows its own, and their divergence is explained.

Two training runs that differ only in rounding drift apart. Step by step, :class:`FreePair`
holds their gap against the teacher-forced allowances accumulated so far (each step may add
what one step's rounding adds, :mod:`jaxnet.parity.forced`). Where the gap first rises above
that, the cause is looked up among the events of the steps up to there:

- **ReLU tie**: the two runs' pre-activations of a unit for an example fall on different
  sides of 0 while within their current disagreement of it; that example's gradient then
  differs by O(1) in one run, a discontinuity no rounding bound covers (with BatchNorm in
  train mode every example depends on its batch's statistics: the tie is attributed to that
  step's batch, whose every example's gradient it moves, not to the one example);
- **max-pool tie**: a 2x2 window's two largest inputs within that disagreement of each
  other, and the runs picking different ones (the gradient goes to another element);
- **near-zero gradient**: an element's two updates differ by more than rounding while its
  gradient is indistinguishable from 0 (within K times the gradient's noise, or below the
  optimizer's ``eps``): Adam's ``m / (sqrt(v) + eps)`` (Adadelta's likewise) normalises it, so rounding flips the
  update's sign or is amplified up to ``lr / eps`` times.

Found, the divergence is explained and what follows is chaotic growth, judged on outcomes;
not found, it is unexplained and the row fails.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from jaxnet.backends import Backend
from jaxnet.numerics import rel_error, ulp
from jaxnet.parity import verdict
from jaxnet.parity.report import Row


@dataclass
class Event:
    step: int
    kind: str  # "ReLU tie" or "near-zero gradient"
    text: str


# Where BatchNorm normalises with batch statistics, every example's output depends on the whole
# batch: the flip moves the statistics and so every example's gradient at that step.
BATCH_TIE = (
    "; with batch statistics the tie is the batch's: every example of step {t} reads it, not only example {b}"
)


def on_cpu(backend) -> bool:
    """A backend that runs on the CPU (a jax device's platform, a torch device's type)."""
    device = getattr(backend, "device", None)
    return getattr(device, "platform", getattr(device, "type", None)) == "cpu"


def _state(backend: Backend) -> tuple[dict, dict]:
    return (
        {k: np.array(v) for k, v in backend.state_dict().items()},
        {k: np.array(v) for k, v in backend.optimizer_state().items()},
    )


def _load(backend: Backend, state: tuple[dict, dict], step: int) -> None:
    backend.load_state_dict(state[0])
    backend.load_optimizer_state(state[1], step)


def _equal(a: tuple[dict, dict], b: tuple[dict, dict]) -> bool:
    return all(
        x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x) for x, y in zip(a, b, strict=True)
    )


@dataclass
class FreePair:
    """One free-running (jax, torch) pair, tracked step by step.

    ``own_torch=False`` when the torch side is stepped by someone else (the reference
    trajectory of :func:`~jaxnet.parity.forced.teacher_forced`). ``eps`` is the optimizer's
    (0 for SGD): below it a normalised update is steep in the gradient.
    """

    jax: Backend
    torch: Backend
    relu_inputs: list[str]
    eps: float = 0.0
    own_torch: bool = True
    pool_inputs: list[str] = field(default_factory=list)  # what 2x2 max-pools read
    # the batch of a step's indices, as (x, y) in this dtype: with it (and both sides on CPU),
    # the search for causes is lazy; None: eager (a recorded torch side answers only what it
    # was asked when recording)
    data: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None
    gaps: list[float] = field(default_factory=list)
    bounds: list[float] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)  # the latest of each kind, up to the first excess
    # the jax side's (step, parameters and buffers, optimizer state) right after the first excess:
    # where a tie explains it, a correct torch run continued from there is one that crossed too
    crossed: tuple[int, dict, dict] | None = None
    # set where a replay did not end where the run did (a side that reloads its saved state
    # wrongly, or is not deterministic): nothing found on the replay is trusted, and the row fails
    unreplayable: str = ""

    def __post_init__(self) -> None:
        # where both sides step deterministically, the causes are looked up only once a gap
        # leaves its bound, by a replay from the kept start (see :meth:`_replay`)
        # (on its own torch side only: the reference a teacher-forced run steps takes a tied
        # step from a gradient it computes again, which a replay here would not know of)
        self.lazy = self.data is not None and self.own_torch and on_cpu(self.jax) and on_cpu(self.torch)
        self._start: tuple | None = None  # both sides' combined states and step counts at the start
        self._steps: list[tuple[np.ndarray, float, dict]] = []  # (batch, tie margin, noise) per step

    def before(self, x: np.ndarray, y: np.ndarray) -> None:
        """Record both sides' state, pre-activations and torch's gradient on the coming batch
        (lazily: only the start, the first time)."""
        if self.lazy:
            if self._start is None:
                self._start = (_state(self.jax), self.jax.step, _state(self.torch), self.torch.step)
            # torch's step applies the gradient asked for here (as it does after the eager
            # search's question): a step on a kept gradient need not be the computed step's bits
            self.torch.loss_and_grads(x, y)
            return
        self._acts = (self.jax.activations(x), self.torch.activations(x))
        self._grads = self.torch.loss_and_grads(x, y)[1]
        if self.eps > 0:  # only the near-zero-gradient search reads the states before the step
            steps = (self.jax.step, self.torch.step)
            last = getattr(self, "_last", None)  # what after() read, if neither side moved since
            self._params = last[1] if last is not None and last[0] == steps else (
                self.jax.state_dict(), self.torch.state_dict())  # fmt: skip

    def step(self, idx: np.ndarray) -> None:
        self.jax.train_steps([idx])
        if self.own_torch:
            self.torch.train_steps([idx])
        self._idx = idx

    def after(self, t: int, allowance: float, noise: dict[str, float]) -> None:
        """Gap after step ``t``; ``allowance`` is this step's teacher-forced allowance
        (normwise), ``noise`` each gradient's measured floor (absolute, in this dtype)."""
        pj, pt = self.jax.state_dict(), self.torch.state_dict()
        self._last = ((self.jax.step, self.torch.step), (pj, pt))
        before = self.bounds[-1] if self.bounds else 0.0
        self.gaps.append(max(rel_error(pj[k], pt[k]) for k in pt))
        self.bounds.append(before + allowance)
        if self.crossed is None and self.gaps[-1] > self.bounds[-1]:
            optimizer = self.jax.optimizer_state()
            self.crossed = (
                t,
                {k: np.array(v) for k, v in pj.items()},
                {k: np.array(v) for k, v in optimizer.items()},
            )
        if len(self.gaps) < 2 or self.gaps[-2] <= self.bounds[-2]:  # up to the first excess
            if self.lazy:
                self._steps.append((self._idx, max(before, allowance), noise))
                if self.gaps[-1] > self.bounds[-1]:
                    self._replay()
                return
            self._find_causes(t, max(before, allowance), pj, pt, noise)

    def _find_causes(self, t: int, within: float, pj: dict, pt: dict, noise: dict[str, float]) -> None:
        self._find_ties(t, within)
        if self.eps > 0:
            self._find_near_zero(t, pj, pt, noise)

    def _replay(self) -> None:
        """Step both sides again from the start up to the first excess, looking for the causes
        at every step as an eager search would have (both sides are deterministic on CPU: the
        replay ends bit for bit where the run is, which is checked), then put both back. The
        rest of the run searches eagerly: a gap back under its bound is searched at each step
        again, as the eager search does."""
        assert self._start is not None
        now = (_state(self.jax), self.jax.step, _state(self.torch), self.torch.step)
        _load(self.jax, *self._start[:2])
        _load(self.torch, *self._start[2:])
        self.lazy = False
        try:
            for t, (idx, within, noise) in enumerate(self._steps, start=1):
                self.before(*self.data(idx))
                self.step(idx)
                self._find_causes(t, within, self.jax.state_dict(), self.torch.state_dict(), noise)
            again = (_state(self.jax), _state(self.torch))
        finally:  # lazy no more: the kept steps start at step 1, later ones would not
            _load(self.jax, *now[:2])
            _load(self.torch, *now[2:])
        sides = [
            n for n, a, b in zip(("jax", "torch"), again, (now[0], now[2]), strict=True) if not _equal(a, b)
        ]
        if sides:
            self.unreplayable = (
                f"replayed from its saved start, the {' and the '.join(sides)} side did not end where the run "
                "did: reloading a saved state (weights or optimizer state) does not restore it, or the side "
                "is not deterministic; no cause found on the replay is trusted"
            )
        self._steps.clear()

    def _record(self, event: Event) -> None:
        """Keep the latest event of each kind: the one nearest the excess explains it best."""
        self.events = [e for e in self.events if e.kind != event.kind] + [event]

    def _find_ties(self, t: int, within: float) -> None:
        """A flip where both runs' pre-activations lie within the accumulated bound of 0 (times
        the layer's depth: each layer's input carries the earlier layers' differences too), or
        a max-pool that picks another element where the window's two largest are that close."""
        acts_j, acts_t = self._acts
        for name in self.pool_inputs:
            depth = 1 + sum(1 for r in self.relu_inputs if list(acts_t).index(r) < list(acts_t).index(name))
            flips, at_tie = verdict.pool_ties(acts_j[name], acts_t[name], depth * within)
            if at_tie.any():
                where = tuple(int(i) for i in flips[np.argmax(at_tie)])
                self._record(Event(t, "max-pool tie", (
                    f"max-pool tie at step {t}: {name} window {list(where[1:])}, example {where[0]} of the "
                    f"batch: its two largest inputs within {depth * within:.1e} of each other relative to the "
                    f"layer's largest ({int(at_tie.sum())} such window(s))"
                )))  # fmt: skip
                break
        for depth, name in enumerate(self.relu_inputs, start=1):
            flips, at_tie = verdict.relu_ties(acts_j[name], acts_t[name], depth * within)
            if at_tie.any():
                where = tuple(int(i) for i in flips[np.argmax(at_tie)])
                b, unit = where[0], list(where[1:]) if len(where) > 2 else where[1]
                pre_j, pre_t = acts_j[name], acts_t[name]
                self._record(Event(t, "ReLU tie", (
                    f"ReLU tie at step {t}: {name} unit {unit}, example {b} of the batch: pre-activation "
                    f"torch {pre_t[where]:.2e}, jax {pre_j[where]:.2e}, both within {depth * within:.1e} "
                    f"of 0 relative to the layer's largest ({int(at_tie.sum())} such flip(s))"
                    + (BATCH_TIE.format(t=t, b=b) if getattr(self.torch.config, "trains", False) else "")
                )))  # fmt: skip
                return

    def _find_near_zero(self, t: int, pj: dict, pt: dict, noise: dict[str, float]) -> None:
        """An element whose two updates differ beyond rounding while its gradient is within
        noise (or the optimizer's eps) of 0: only normalised updates (eps > 0) do that."""
        before_j, before_t = self._params
        for name in pt:
            dj, dt = pj[name] - before_j[name], pt[name] - before_t[name]
            size = np.maximum(np.abs(before_t[name]), np.abs(pt[name]))
            resolution = ulp(size, pt[name].dtype) + ulp(dt, dt.dtype)
            g = self._grads[name]
            near = (np.abs(g) <= max(verdict.K * noise[name], self.eps)) & (g != 0)
            hits = np.argwhere((np.abs(dj - dt) > verdict.K * resolution) & near)
            if len(hits):
                i = tuple(int(v) for v in hits[np.argmax(np.abs(dj - dt)[tuple(hits.T)])])
                how = "opposite signs" if np.sign(dj[i]) != np.sign(dt[i]) else "the same sign, amplified"
                self._record(Event(t, "near-zero gradient", (
                    f"near-zero gradient at step {t}: {name}{list(i)} has gradient {g[i]:.1e} (noise "
                    f"{noise[name]:.1e}, eps {self.eps:g}); its normalised update moved {dt[i]:+.2e} in torch "
                    f"and {dj[i]:+.2e} in jax ({how}; {len(hits)} such element(s))"
                )))  # fmt: skip
                return

    def row(self, section: str, quantity: str, dtype: str, forced: list[float] | None = None) -> Row:
        """The verdict: within the accumulated bound, or above it after an explained event.

        ``forced``: the teacher-forced ratio of each step, where the same steps were also
        teacher-forced. An event explains a divergence only while every teacher-forced step
        up to it passed: a step that fails on its own is an implementation difference, which
        no tie or near-zero gradient excuses.
        """
        gaps, bounds = np.array(self.gaps), np.array(self.bounds)
        if not np.all(np.isfinite(gaps)):
            t = int(np.argmin(np.isfinite(gaps))) + 1
            return Row(section, quantity, dtype, np.inf, bounds[t - 1] / verdict.K, bounds[t - 1], False,
                       None, f"the gap is not finite from step {t} on")  # fmt: skip
        over = np.flatnonzero(gaps > bounds)
        final = f"gap {gaps[-1]:.1e} after {len(gaps)} steps"
        if self.unreplayable:
            t = int(over[0]) + 1 if len(over) else len(gaps)
            return Row(section, quantity, dtype, gaps[t - 1], bounds[t - 1] / verdict.K, bounds[t - 1], False,
                       None, f"{self.unreplayable}; {final}")  # fmt: skip
        if not len(over):
            i = int(np.argmax(gaps / np.maximum(bounds, 1e-300)))
            note = f"{final}; within the accumulated teacher-forced bound at every step"
            return Row(section, quantity, dtype, gaps[i], bounds[i] / verdict.K, bounds[i], True, None, note)
        t = int(over[0]) + 1
        gap, bound = gaps[t - 1], bounds[t - 1]
        head = f"gap {gap:.1e} rose above the accumulated bound {bound:.1e} at step {t}"
        failing = [s + 1 for s, r in enumerate((forced or [])[:t]) if r > 1]
        # nearest first; a tie (a discontinuity) before a near-zero gradient at the same step
        causes = sorted(
            (e for e in self.events if e.step <= t), key=lambda e: (-e.step, e.kind == "near-zero gradient")
        )
        if failing:
            why = f"teacher-forced step(s) {failing[:5]} failed on their own: an implementation difference"
        elif not causes:
            why = "unexplained (no ReLU or max-pool tie, no near-zero gradient up to there)"
        else:
            near = " and a ".join(e.text for e in causes if e.step >= causes[0].step - 1)
            note = f"{head}, after a {near}; chaotic from there (judged on outcomes); {final}"
            return Row(section, quantity, dtype, gap, bound / verdict.K, np.inf, True, None, note)
        return Row(
            section, quantity, dtype, gap, bound / verdict.K, bound, False, None, f"{head}: {why}; {final}"
        )
