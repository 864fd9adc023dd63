"""The accuracy–robustness trade-off report: a table over λ × attacks, markdown, JSON and a plot.

Example:
    >>> from floatify.report import Report, Score
    >>> r = Report(lams=[0.0, 1.0], attacks={"clean": "no attack"}, scores={"0.0": {"clean": Score(0.9, 0.01, 100)},
    ...            "1.0": {"clean": Score(0.8, 0.02, 100)}}, meta={"eps": 8 / 255})
    >>> Report.from_json(r.to_json()) == r
    True
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from floatify.config import check_real

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from floatify.audit import AuditCheck

__all__ = ["Report", "Score", "LamChoice"]


@dataclass(frozen=True)
class Score:
    """Accuracy as a fraction: mean over points of the per-point expected accuracy, ± 95% CI half-width."""

    mean: float
    ci95: float
    n: int
    note: str = ""  # e.g. why a cell is not applicable

    @property
    def low(self) -> float:
        """The interval's lower end, clipped to 0 (an accuracy is never below it)."""
        return max(0.0, self.mean - self.ci95)

    @property
    def high(self) -> float:
        """The interval's upper end, clipped to 1 (an accuracy is never above it)."""
        return min(1.0, self.mean + self.ci95)

    def text(self) -> str:
        """The cell as the report prints it, in %: ``mean ± ci``, or ``mean +up/-down`` where [0, 100] clips it.

        Example:
            >>> from floatify.report import Score
            >>> Score(0.5, 0.1, 10).text(), Score(0.98, 0.05, 10).text()
            ('50.0 ± 10.0', '98.0 +2.0/-5.0')
        """
        mean, ci = round(100 * self.mean, 1), round(100 * self.ci95, 1)
        if mean - ci >= 0.0 and mean + ci <= 100.0 + 1e-9:  # reason: judged on the printed (rounded) numbers
            return f"{mean:.1f} ± {ci:.1f}"
        low, high = round(100 * self.low, 1), round(100 * self.high, 1)
        return f"{mean:.1f} +{high - mean:.1f}/-{mean - low:.1f}"


_SCORE_FIELDS = ("mean", "ci95", "n", "note")


def _as_dict(score: Score | None) -> dict | None:
    return None if score is None else {**asdict(score), "low": score.low, "high": score.high}


def _audit_from(items: list | None) -> list[AuditCheck] | None:
    """The audit of a report.json (None for reports written without one, or before audits existed)."""
    if items is None:
        return None
    from floatify.audit import from_dicts

    return from_dicts(items)


def _from_dict(data: dict | None) -> Score | None:
    return None if data is None else Score(**{k: v for k, v in data.items() if k in _SCORE_FIELDS})


@dataclass(frozen=True)
class LamChoice:
    """An operating point chosen by :meth:`Report.choose_lam`; accuracies in % (as reports print them).

    ``clean`` and ``robust`` are the report's values at ``lam``: measured ones where ``measured``, else linear
    interpolations between the two measured λ around it (an estimate: evaluate at ``lam`` to measure it).
    ``robust`` is the headline column. ``reason`` says in one line why this λ.
    """

    lam: float
    clean: float
    robust: float
    measured: bool
    reason: str


_SLACK = 1e-9  # reason: a λ interpolated to meet a bound exactly may miss it by a rounding error


@dataclass(frozen=True)
class _Dial:
    """A report's clean and headline robust accuracy (%) over λ, linear between the measured λ."""

    lams: tuple[float, ...]  # measured, ascending
    clean: tuple[float, ...]
    robust: tuple[float, ...]
    robust_label: str

    @classmethod
    def of(cls, report: Report) -> _Dial:
        clean_label, robust_label = report.clean_label, report.robust_label()
        if clean_label is None or clean_label not in report.attacks:
            raise ValueError("choose_lam needs the clean column: evaluate with AttackSpec('clean') among the attacks")
        if robust_label is None:
            raise ValueError("choose_lam needs a robust column: evaluate with an attack on the noisy model")
        lams = tuple(sorted(set(report.lams)))
        rows = [(report.score(v, clean_label), report.score(v, robust_label)) for v in lams]
        missing = [v for v, (c, r) in zip(lams, rows) if c is None or r is None]
        if missing:
            raise ValueError(f"choose_lam needs clean and robust scores at every λ; λ={missing[0]:g} has none: "
                             f"evaluate again with both columns measured")
        return cls(lams, tuple(100 * c.mean for c, _ in rows if c is not None),
                   tuple(100 * r.mean for _, r in rows if r is not None), robust_label)

    def at(self, lam: float) -> tuple[float, float]:
        """(clean, robust) at ``lam``: measured, or interpolated between the measured λ around it."""
        i = max(j for j, v in enumerate(self.lams) if v <= lam) if lam >= self.lams[0] else 0
        if i == len(self.lams) - 1 or self.lams[i] == lam:
            return self.clean[i], self.robust[i]
        t = (lam - self.lams[i]) / (self.lams[i + 1] - self.lams[i])
        return (self.clean[i] + t * (self.clean[i + 1] - self.clean[i]),
                self.robust[i] + t * (self.robust[i + 1] - self.robust[i]))

    def candidates(self, min_clean: float | None, min_robust: float | None) -> list[float]:
        """The ends of every stretch of λ where both bounds hold (an optimum of a linear objective is among them)."""
        if len(self.lams) == 1:
            return [self.lams[0]] if self._holds(self.lams[0], min_clean, min_robust) else []
        ends = []
        for i in range(len(self.lams) - 1):
            lo, hi = 0.0, 1.0
            for values, bound in ((self.clean, min_clean), (self.robust, min_robust)):
                if bound is not None:
                    lo, hi = _bounded(lo, hi, values[i], values[i + 1], bound)
            if lo <= hi:
                a, b = self.lams[i], self.lams[i + 1]
                ends += [self._snap(a + lo * (b - a)), self._snap(a + hi * (b - a))]
        return [v for v in ends if self._holds(v, min_clean, min_robust)]

    def _holds(self, lam: float, min_clean: float | None, min_robust: float | None) -> bool:
        clean, robust = self.at(lam)
        return ((min_clean is None or clean >= min_clean - _SLACK)
                and (min_robust is None or robust >= min_robust - _SLACK))

    def _snap(self, lam: float) -> float:
        """``lam``, or the measured λ it is within rounding of."""
        return next((v for v in self.lams if abs(v - lam) <= 1e-12), lam)


def _bounded(lo: float, hi: float, start: float, end: float, bound: float) -> tuple[float, float]:
    """[lo, hi] narrowed to the t in [0, 1] where the line from ``start`` (t = 0) to ``end`` (t = 1) is >= bound."""
    if start == end:
        return (lo, hi) if start >= bound else (1.0, 0.0)
    t = (bound - start) / (end - start)
    return (max(lo, t), hi) if end > start else (lo, min(hi, t))


@dataclass
class Report:
    """Scores per λ and column. What a column means is stored, never read off its label: ``clean_label`` is
    the no-attack column, ``noise_off`` the columns that attack the noise-off (deterministic) model."""

    lams: list[float]
    attacks: dict[str, str]  # label -> full description (attack, steps, noise draws, ...)
    scores: dict[str, dict[str, Score | None]]  # str(λ) -> label -> score (None: not applicable)
    meta: dict = field(default_factory=dict)
    headline: str | None = None  # the label of the headline robust column (per-point worst case over attacks)
    clean_label: str | None = "clean"  # the column without an attack (None: there is none)
    noise_off: list[str] = field(default_factory=list)  # columns measured on the noise-off model
    notes: list[str] = field(default_factory=list)  # what a reader must know about the whole evaluation
    audit: list[AuditCheck] | None = None  # floatify.audit's checks, when the evaluation was audited

    def score(self, lam: float, label: str) -> Score | None:
        return self.scores[str(float(lam))][label]

    def columns(self) -> list[str]:
        """Labels in display order: clean first, then the headline, then the single attacks."""
        labels = list(self.attacks)
        first = [k for k in (self.clean_label, self.headline) if k in labels]
        return first + [k for k in labels if k not in first]

    def dial_summary(self) -> str:
        """One sentence a newcomer can read: what turning λ from its lowest to its highest value buys and costs."""
        robust, clean = self.robust_label(), self.clean_label
        if robust is None or clean is None or clean not in self.attacks or len(self.lams) < 2:
            return ""
        lo, hi = str(float(min(self.lams))), str(float(max(self.lams)))
        c0, c1 = self.scores[lo].get(clean), self.scores[hi].get(clean)
        r0, r1 = self.scores[lo].get(robust), self.scores[hi].get(robust)
        if c0 is None or c1 is None or r0 is None or r1 is None:
            return ""
        return (f"Turning the dial from λ = {float(lo):g} to λ = {float(hi):g} moves clean accuracy "
                f"{100 * c0.mean:.1f}% → {100 * c1.mean:.1f}% and robust accuracy (under attack, eps "
                f"{self.meta.get('eps', '?')}) {100 * r0.mean:.1f}% → {100 * r1.mean:.1f}%. Pick the λ whose row fits "
                f"your deployment: `with floatify.lam(v): model(x)`.")

    def choose_lam(self, max_clean_drop: float | None = None, min_robust: float | None = None) -> LamChoice:
        """The operating point that meets a constraint given in percentage points, as the report prints them.

        ``max_clean_drop``: the most robust λ whose clean accuracy stays within ``max_clean_drop`` points of
        λ = 0's (the report must have measured λ = 0). ``min_robust``: the least λ whose robust accuracy reaches
        ``min_robust`` %. Both: the most robust λ that meets both. λ ranges over the measured λ and the λ between
        two adjacent measured ones, where both accuracies are interpolated linearly: an estimate
        (``LamChoice.measured`` is False), which an evaluation at that λ measures. The robust accuracy is the
        headline column (:meth:`robust_label`). When no λ meets the constraint, a ValueError says the best that
        is reachable.

        Example:
            >>> from floatify.report import Report, Score
            >>> r = Report([0.0, 1.0], {"clean": "no attack", "pgd": "PGD"}, {
            ...     "0.0": {"clean": Score(1.0, 0.0, 100), "pgd": Score(0.25, 0.0, 100)},
            ...     "1.0": {"clean": Score(0.875, 0.0, 100), "pgd": Score(0.75, 0.0, 100)}}, headline="pgd")
            >>> choice = r.choose_lam(max_clean_drop=5)
            >>> choice.lam, choice.clean, choice.robust, choice.measured
            (0.4, 95.0, 45.0, False)
            >>> r.choose_lam(min_robust=50).lam
            0.5
        """
        check_real("max_clean_drop", max_clean_drop, low=0.0, high=100.0, optional=True,
                   meaning="points of clean accuracy")
        check_real("min_robust", min_robust, low=0.0, high=100.0, optional=True, meaning="robust accuracy in %")
        if max_clean_drop is None and min_robust is None:
            raise ValueError("choose_lam needs a constraint: max_clean_drop (the points of clean accuracy you accept "
                             "to lose) or min_robust (the robust accuracy in % to reach)")
        dial = _Dial.of(self)
        min_clean = None
        if max_clean_drop is not None:
            if dial.lams[0] != 0.0:
                raise ValueError(f"max_clean_drop counts from λ = 0, which this report lacks (λ = "
                                 f"{', '.join(f'{v:g}' for v in dial.lams)}); evaluate with 0 among the lams")
            min_clean = dial.clean[0] - max_clean_drop
        found = dial.candidates(min_clean, min_robust)
        if not found:
            raise ValueError(_unreachable(dial, max_clean_drop, min_robust))
        if max_clean_drop is None:
            lam = min(found)
        else:  # reason: the most robust; between equally robust λ the cleaner, then the smaller
            lam = max(found, key=lambda v: (dial.at(v)[1], dial.at(v)[0], -v))
        return _choice(dial, lam, max_clean_drop, min_robust)

    def to_markdown(self, audit: bool = True) -> str:
        """The table, its attacks, settings and notes; then the audit section (where there is one) if ``audit``."""
        labels = self.columns()
        heads = [f"**{k}**" if k == self.headline else k for k in labels]
        summary = self.dial_summary()
        lines = ([summary, ""] if summary else []) + ["| λ | " + " | ".join(heads) + " |",
                                                      "|---|" + "---|" * len(labels)]
        for v in self.lams:
            cells = []
            for label in labels:
                s = self.scores[str(float(v))].get(label)
                cells.append("n/a" if s is None else s.text())
            lines.append(f"| {v:g} | " + " | ".join(cells) + " |")
        lines.append("")
        lines.append("Accuracy in % (mean over test points of the expected accuracy over fresh noise draws, ± 95% CI; "
                     "+up/-down where [0, 100] clips it).")
        lines.append("")
        if self.headline:
            off = f" Columns {', '.join(self.noise_off)} attack and score a different, deterministic model (the " \
                  "weight noise off) and are not part of it." if self.noise_off else ""
            lines.append(f"Headline robust accuracy: **{self.headline}** (bold column).{off}")
            lines.append("")
        lines.append("Attacks:")
        lines.extend(f"- **{label}**: {self.attacks[label]}" for label in labels)
        if self.meta:
            lines.append("")
            lines.append("Settings: " + ", ".join(f"{k}={v}" for k, v in self.meta.items()))
        notes = {s.note for row in self.scores.values() for s in row.values() if s is not None and s.note}
        notes.update(self.notes)
        if any(s is None for row in self.scores.values() for s in row.values()):
            notes.add("n/a: AutoAttack runs only where the model is deterministic (λ = 0 or noise off); a transfer "
                      "attack from the noise-off model needs a randomised model (λ > 0)")
        lines.extend(f"\nNote: {n}" for n in sorted(notes))
        if audit and self.audit is not None:
            lines += ["", self.audit_markdown().rstrip()]
        return "\n".join(lines) + "\n"

    def audit_markdown(self) -> str:
        """The audit section (:mod:`floatify.audit`): the verdict and a table of the checks; empty without one."""
        if self.audit is None:
            return ""
        from floatify.audit import audit_markdown

        return "Audit of this evaluation (floatify.audit):\n\n" + audit_markdown(self.audit)

    def to_json(self, path: str | Path | None = None) -> str:
        """The report as JSON (also written to ``path``, atomically, when given)."""
        text = json.dumps(
            {"lams": self.lams, "headline": self.headline, "clean_label": self.clean_label,
             "noise_off": self.noise_off, "notes": self.notes,
             "audit": None if self.audit is None else [asdict(c) for c in self.audit],
             "headline_scores": {k: _as_dict(row.get(self.headline)) for k, row in self.scores.items()}
             if self.headline else None,
             "attacks": {k: self.attacks[k] for k in self.columns()}, "meta": self.meta,
             "scores": {k: {a: _as_dict(s) for a, s in row.items()}
                        for k, row in self.scores.items()}},
            indent=2,
        )
        if path is not None:
            from floatify.io import atomic_write

            atomic_write(path, text)
        return text

    @classmethod
    def from_json(cls, text_or_path: str | Path) -> Report:
        text = str(text_or_path)
        if not text.lstrip().startswith("{"):
            text = Path(text_or_path).read_text()
        data = json.loads(text)
        scores = {k: {a: _from_dict(s) for a, s in row.items()} for k, row in data["scores"].items()}
        attacks = dict(data["attacks"])
        if "noise_off" in data:
            clean, noise_off = data.get("clean_label"), list(data["noise_off"])
        else:  # reason: reports written before the column meanings were stored: their labels follow the defaults
            clean = "clean" if "clean" in attacks else None
            noise_off = [label for label in attacks if label.endswith("(noise off)")]
        return cls([float(v) for v in data["lams"]], attacks, scores, dict(data.get("meta", {})),
                   headline=data.get("headline"), clean_label=clean, noise_off=noise_off,
                   notes=list(data.get("notes", [])), audit=_audit_from(data.get("audit")))

    def plot(self, path: str | Path) -> Path:
        """Write :meth:`figure` to ``path`` (any format matplotlib writes, chosen by the suffix), atomically."""
        from floatify.io import atomic_path

        fig = self.figure()
        import matplotlib.pyplot as plt

        path = Path(path)
        try:
            with atomic_path(path) as tmp:
                fig.savefig(tmp, dpi=110, format=path.suffix.lstrip(".") or "png")
        finally:
            plt.close(fig)
        return path

    def figure(self) -> Figure:
        """The dial at a glance: clean and headline robust accuracy over λ (left), the trade-off curve (right)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (ax_lam, ax_trade) = plt.subplots(1, 2, figsize=(11.5, 4.6))
        robust, clean = self.robust_label(), self.clean_label
        for label in self.columns():
            xs, ys, down, up = [], [], [], []
            for v in self.lams:
                s = self.scores[str(float(v))].get(label)
                if s is not None:
                    xs.append(v)
                    ys.append(100 * s.mean)
                    down.append(100 * (s.mean - s.low))  # reason: the bars end at 0% and 100%
                    up.append(100 * (s.high - s.mean))
            if not xs:
                continue
            main = label in (clean, robust)
            name = "clean accuracy" if label == clean else f"robust accuracy: {label}" if label == robust else label
            ax_lam.errorbar(xs, ys, yerr=[down, up], marker="o", capsize=3, label=name, linewidth=2.4 if main else 0.9,
                            linestyle="-" if main else "--", alpha=1.0 if main else 0.55,
                            markersize=6 if main else 3)
        ax_lam.set_xlabel("λ   (0 = most accurate  →  1 = most robust)")
        ax_lam.set_ylabel("accuracy (%)")
        ax_lam.set_title("one model, every operating point")
        ax_lam.grid(alpha=0.3)
        ax_lam.legend(fontsize=7.5)
        clean_row = [self.scores[str(float(v))].get(clean) for v in self.lams] if clean else []
        robust_row = [self.scores[str(float(v))].get(robust) for v in self.lams] if robust else []
        if clean_row and robust_row and all(s is not None for s in clean_row + robust_row):
            cx = [100 * s.mean for s in clean_row if s is not None]
            ry = [100 * s.mean for s in robust_row if s is not None]
            ax_trade.plot(cx, ry, marker="o", linewidth=2.4)
            for v, a, b in zip(self.lams, cx, ry):
                ax_trade.annotate(f"λ={v:g}", (a, b), textcoords="offset points", xytext=(4, 4), fontsize=8)
            ax_trade.set_xlabel("clean accuracy (%)")
            ax_trade.set_ylabel("robust accuracy (%)")
            ax_trade.set_title(f"the trade-off the dial offers\n(robust = {robust})", fontsize=10)
            ax_trade.grid(alpha=0.3)
        sub = f"eps={self.meta['eps']}, preset={self.meta.get('preset', 'custom')}" if "eps" in self.meta else ""
        fig.suptitle(f"{self.meta.get('title', 'floatify trade-off')}   {sub}", fontsize=10)
        fig.tight_layout()
        return fig

    def robust_label(self) -> str | None:
        """The headline column; for reports without one, the attack with the lowest mean accuracy across λ
        among those scored at every λ on the noisy model."""
        if self.headline:
            return self.headline
        best, best_mean = None, None
        for label in self.attacks:
            if label == self.clean_label or label in self.noise_off:
                continue
            row = [s for v in self.lams if (s := self.scores[str(float(v))].get(label)) is not None]
            if len(row) < len(self.lams):
                continue
            mean = sum(s.mean for s in row) / len(row)
            if best_mean is None or mean < best_mean:
                best, best_mean = label, mean
        return best


def _unreachable(dial: _Dial, max_clean_drop: float | None, min_robust: float | None) -> str:
    """Why no λ meets the constraint, with the best that is reachable."""
    reaching = dial.candidates(None, min_robust)
    if not reaching:
        best = max(dial.lams, key=lambda v: dial.at(v)[1])  # reason: a piecewise-linear curve peaks at a measured λ
        return (f"no λ reaches {min_robust:g}% robust accuracy ({dial.robust_label}): the most robust is "
                f"{dial.at(best)[1]:.1f}% at λ={best:g}")
    best = max(reaching, key=lambda v: dial.at(v)[0])
    return (f"no λ keeps clean accuracy within {max_clean_drop:g} points of λ=0 ({dial.clean[0]:.1f}%) while reaching "
            f"{min_robust:g}% robust accuracy: the smallest drop that reaches it is "
            f"{dial.clean[0] - dial.at(best)[0]:.1f} at λ={best:.3g}")


def _choice(dial: _Dial, lam: float, max_clean_drop: float | None, min_robust: float | None) -> LamChoice:
    """The :class:`LamChoice` for ``lam``, with its one-line reason."""
    clean, robust = dial.at(lam)
    measured = lam in dial.lams
    if measured:
        where = f"λ={lam:g} (measured)"
    else:
        below, above = max(v for v in dial.lams if v < lam), min(v for v in dial.lams if v > lam)
        where = f"λ={lam:.3g} (interpolated between the measured λ={below:g} and λ={above:g}: an estimate)"
    clean_text = f"clean {clean:.1f}%"
    if max_clean_drop is not None:
        clean_text += f", {dial.clean[0] - clean:.1f} points below λ=0 (at most {max_clean_drop:g})"
    robust_text = f"robust {robust:.1f}% ({dial.robust_label})"
    if min_robust is not None:
        robust_text += f", at least {min_robust:g}%"
    goal = "the least λ that meets it" if max_clean_drop is None else "the most robust λ that meets it"
    return LamChoice(lam, clean, robust, measured, f"{where}: {clean_text}; {robust_text}; {goal}")
