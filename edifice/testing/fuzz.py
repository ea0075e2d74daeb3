"""An API fuzzer: hypothesis draws calls of the public API and every one must behave.

A *case* is one call, ``Case(fn, perturbed)``: ``fn()`` makes the call and ``perturbed`` names the
arguments the strategy made possibly invalid (empty for a call that must succeed). :func:`check_case`
accepts exactly two outcomes:

- the call returns, and every floating tensor it returns is finite; or
- the call raises ``ValueError`` or ``TypeError`` whose message names one of ``perturbed``.

Anything else (another exception type, an error on a valid call, an error naming no perturbed
argument, a NaN or Inf in the output) is a :class:`FuzzFailure`. :func:`run` drives a strategy of
cases for ``max_examples`` draws and returns a :class:`FuzzReport` with the counts, which the test
suite asserts on and ``benchmarks/fuzz.py`` tabulates per family.

>>> import torch
>>> from hypothesis import strategies as st
>>> from edifice.testing.fuzz import Case, run
>>> def square_root(x):
...     if not isinstance(x, torch.Tensor):
...         raise TypeError(f"x must be a tensor, got {type(x).__name__}")
...     return x.abs().sqrt()
>>> cases = st.one_of(st.just(Case(lambda: square_root(torch.ones(3)))),
...                   st.just(Case(lambda: square_root(3), perturbed=("x",))))
>>> report = run("demo", "sqrt", cases, max_examples=10)
>>> report.tried > 0 and report.failures == []
True
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

__all__ = ["Case", "FuzzFailure", "FuzzReport", "check_case", "run", "ALLOWED"]

ALLOWED = (ValueError, TypeError)


@dataclass
class Case:
    """One call of the API: ``fn()``; ``perturbed`` names the arguments that may be invalid."""

    fn: Callable[[], Any]
    perturbed: tuple[str, ...] = ()
    label: str = ""

    def __repr__(self) -> str:  # hypothesis prints the failing example
        return f"Case({self.label or getattr(self.fn, '__name__', 'call')!s}, perturbed={self.perturbed})"


class FuzzFailure(AssertionError):
    """A case broke the contract (wrong exception type, unnamed argument, NaN output, ...)."""


@dataclass
class FuzzReport:
    """Counts of one :func:`run`: ``tried`` cases, ``ok`` returns, ``rejected`` named errors, and failures."""

    family: str
    target: str
    tried: int = 0
    ok: int = 0
    rejected: int = 0
    failures: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"family": self.family, "target": self.target, "tried": self.tried, "ok": self.ok,
                "rejected": self.rejected, "failures": list(self.failures)}


def _finite(out: Any) -> bool:
    if isinstance(out, torch.Tensor):
        return not out.is_floating_point() or bool(torch.isfinite(out.detach()).all())
    if isinstance(out, (tuple, list)):
        return all(_finite(o) for o in out)
    if isinstance(out, dict):
        return all(_finite(o) for o in out.values())
    return True


def _names(message: str, names: tuple[str, ...]) -> bool:
    return any(re.search(rf"(?<![A-Za-z0-9_]){re.escape(n)}(?![A-Za-z0-9_])", message) for n in names)


def check_case(case: Case) -> str:
    """Run ``case`` and return ``"ok"`` or ``"rejected"``; raise :class:`FuzzFailure` otherwise."""
    try:
        out = case.fn()
    except ALLOWED as e:
        msg = str(e)
        if not case.perturbed:
            raise FuzzFailure(f"{case!r}: a valid call raised {type(e).__name__}: {msg}") from e
        if not _names(msg, case.perturbed):
            raise FuzzFailure(f"{case!r}: {type(e).__name__} does not name any of {case.perturbed}: {msg}") from e
        return "rejected"
    except Exception as e:  # noqa: BLE001 - any other type is the failure being looked for
        raise FuzzFailure(f"{case!r}: raised {type(e).__name__} (only ValueError / TypeError are allowed): {e}") from e
    if not _finite(out):
        raise FuzzFailure(f"{case!r}: returned a non-finite tensor")
    return "ok"


def run(family: str, target: str, cases: Any, *, max_examples: int = 30, seed: int = 0,
        raise_on_failure: bool = True) -> FuzzReport:
    """Draw ``max_examples`` cases from the strategy ``cases`` and check each (derandomized by ``seed``).

    Returns:
        A :class:`FuzzReport`. With ``raise_on_failure`` (default) the first failure is raised as
        :class:`FuzzFailure` after hypothesis has shrunk it.
    """
    from hypothesis import HealthCheck, given, seed as hseed, settings

    report = FuzzReport(family, target)

    @settings(max_examples=max_examples, deadline=None, database=None, derandomize=False,
              suppress_health_check=list(HealthCheck), report_multiple_bugs=False)
    @hseed(seed)
    @given(cases)
    def one(case: Case) -> None:
        report.tried += 1
        try:
            outcome = check_case(case)
        except FuzzFailure as e:
            report.failures.append(str(e))
            if raise_on_failure:
                raise
            return
        if outcome == "ok":
            report.ok += 1
        else:
            report.rejected += 1

    one()
    return report
