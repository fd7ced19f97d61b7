"""The loss study's claims, each answered from ``results.csv`` (and ``terms.csv``) by paired differences.

Runs of one study differ most by the exam they hold out (30, 87 or 3 true lesions): a mean ± sd
over folds mixes that with the effect asked about.  Every comparison here is therefore **paired**:
two runs that share everything but the one thing compared (the head; or the same run decided
another way), the difference taken within the pair, then summarised over pairs — how many pairs
agree in sign and whether the mean difference stands clear of its own spread.

Claims (``lesionseg study --summarize`` writes ``STUDY/verdicts.md``):

1. *Softmax gives more false positives than sigmoid with the same loss*: per loss, FP(softmax) −
   FP(sigmoid) over runs of the same fold and seed, and which loss term moved with it
   (:mod:`lesionseg.study.terms`: the per-class terms on the held-out exams, same pairs).
2. *The asymmetric/symmetric focal losses collapse, and the blank diagnostic says so*: per loss ×
   head, runs that predicted nothing, runs whose collapse diagnostic fired, and whether the two agree.
3. *Averaging overlapping windows cuts false positives*: per loss, FP(default) − FP(no_overlap) of
   each run.
4. *The tuned threshold / minimum size*: per loss, the change in TP, FP and lesion F1 from the
   default decision to the tuned one, each run.
5. *Which loss is best, and is the spread too large to tell*: lesion F1 per loss × head, and for the
   best one, every other whose paired F1 difference is within one standard deviation of the
   pairs' differences (unreadable at this number of runs).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

PAIR_KEYS = ("seed", "fold")
MIN_PAIRS = 3
"""Fewest pairs for a verdict: with two, one exam's luck decides."""
VERDICTS_FILE = "verdicts.md"


def paired_difference(df: pd.DataFrame, column: str, by: str, a: str, b: str,
                      within: Sequence[str] = ("loss",)) -> pd.DataFrame:
    """``column`` of level ``a`` minus level ``b`` of ``by``, for runs paired on seed, fold (and ``within``).

    Parameters
    ----------
    df : pandas.DataFrame
        ``results.csv`` rows of one variant (or ``terms.csv`` rows).
    column : str
        The quantity compared (``FP``, ``lesion_f1``, a term...).
    by : str
        The column whose two levels are compared (``head``, ``variant``).
    a, b : str
        The levels: the difference is a − b.
    within : sequence of str
        Columns a pair must also share (default: the loss); the result is summarised per their values.

    Returns
    -------
    pandas.DataFrame
        One row per ``within`` group: ``pairs``, ``mean``, ``sd`` (over pairs), ``a_higher`` and
        ``b_higher`` (pairs where a's value is above / below b's), ``clear`` (at least :data:`MIN_PAIRS`
        pairs, every one agreeing in sign, and |mean| above their sd: a difference the spread does not hide).
    """
    keys = [k for k in (*within, *PAIR_KEYS) if k in df.columns]
    left = df[df[by] == a].set_index(keys)[column]
    right = df[df[by] == b].set_index(keys)[column]
    both = pd.concat({"a": left, "b": right}, axis=1, join="inner").dropna()
    both["diff"] = both.a.astype(float) - both.b.astype(float)
    rows = []
    groups = both.groupby(level=list(within)) if within else [((), both)]
    for key, part in groups:
        d = part["diff"].to_numpy()
        sd = float(np.std(d, ddof=1)) if len(d) > 1 else float("nan")
        higher, lower = int((d > 0).sum()), int((d < 0).sum())
        mean = float(d.mean())
        clear = len(d) >= MIN_PAIRS and (higher == len(d) or lower == len(d)) and abs(mean) > sd
        key = key if isinstance(key, tuple) else (key,)
        rows.append({**dict(zip(within, key)), "pairs": len(d), "mean": mean, "sd": sd,
                     f"{a}_higher": higher, f"{b}_higher": lower, "clear": bool(clear)})
    return pd.DataFrame(rows)


def _say(row: pd.Series, what: str, a: str, b: str) -> str:
    """One plain sentence for a paired difference."""
    n = int(row.pairs)
    if n == 0:
        return "no pair yet"
    sd = "" if np.isnan(row.sd) else f" ± {row.sd:.3g}"
    head = f"{what} {a} − {b} = {row['mean']:+.3g}{sd} over {n} pair(s); {a} higher in {int(row[f'{a}_higher'])}"
    if n < MIN_PAIRS:
        return head + f": {n} pair(s), too few for a verdict"
    if row.clear:
        return head + f": **{a} {'higher' if row['mean'] > 0 else 'lower'}, consistently**"
    return head + ": within the spread (no verdict)"


def head_verdicts(results: pd.DataFrame, terms: pd.DataFrame | None) -> list[str]:
    """Claim 1: softmax against sigmoid, per loss, with the terms that moved."""
    runs = results[results.variant == "default"]
    fp = paired_difference(runs, "FP", "head", "softmax", "sigmoid")
    lines = []
    for _, row in fp.iterrows():
        line = f"- `{row.loss}`: " + _say(row, "FP", "softmax", "sigmoid")
        if terms is not None and not terms.empty and row.pairs:
            moved = []
            for term in ("ce_background", "ce_lesion", "region_background", "region_lesion", "soft_fp_ml"):
                if term not in terms.columns or terms[terms.loss == row.loss][term].isna().all():
                    continue
                t = paired_difference(terms[terms.loss == row.loss], term, "head", "softmax", "sigmoid")
                if len(t) and t.pairs.iloc[0]:
                    r = t.iloc[0]
                    moved.append(f"{term} {r['mean']:+.3g}" + (" (clear)" if r.clear else ""))
            if moved:
                line += "; terms on the held-out exams, softmax − sigmoid: " + ", ".join(moved)
        lines.append(line)
    return lines or ["- no loss has both heads run on the same fold yet"]


def _names(items: Sequence[str]) -> str:
    return ", ".join(f"`{x}`" for x in items) if items else "none"


def head_tally(results: pd.DataFrame, terms: pd.DataFrame | None) -> list[str]:
    """Claim 1 over all losses in one line: with how many losses softmax is clearly lower, higher, or neither."""
    runs = results[results.variant == "default"]
    fp = paired_difference(runs, "FP", "head", "softmax", "sigmoid")
    fp = fp[fp.pairs >= MIN_PAIRS] if len(fp) else fp
    if not len(fp):
        return []
    lower = [str(r.loss) for r in fp.itertuples() if r.clear and r.mean < 0]
    higher = [str(r.loss) for r in fp.itertuples() if r.clear and r.mean > 0]
    neither = [str(r.loss) for r in fp.itertuples() if not r.clear]
    line = (f"- over the {len(fp)} loss(es) with both heads on at least {MIN_PAIRS} paired runs, softmax gives "
            f"consistently fewer false lesions with {len(lower)} ({_names(lower)}), consistently more with "
            f"{len(higher)} ({_names(higher)}), no verdict with {len(neither)} ({_names(neither)})")
    if terms is not None and not terms.empty and "soft_fp_ml" in terms.columns:
        mass = paired_difference(terms[terms.loss.isin(fp.loss)], "soft_fp_ml", "head", "softmax", "sigmoid")
        if len(mass):
            below = int((mass["mean"] < 0).sum())
            clear = int((mass.clear & (mass["mean"] < 0)).sum())
            line += (f"; softmax's soft false mass (Σp over true background) is lower with {below} of them "
                     f"({clear} consistently)")
    return [line]


def variant_tally(results: pd.DataFrame, a: str, b: str, column: str) -> str:
    """One line: over loss × head, how often ``column`` of decision ``a`` is consistently below / above ``b``'s."""
    diff = paired_difference(results, column, "variant", a, b, within=("loss", "head"))
    diff = diff[diff.pairs >= MIN_PAIRS] if len(diff) else diff
    if not len(diff):
        return f"{column}: fewer than {MIN_PAIRS} paired runs"
    lower = int((diff.clear & (diff["mean"] < 0)).sum())
    higher = int((diff.clear & (diff["mean"] > 0)).sum())
    return (f"{column} {a} − {b} consistently lower in {lower}, consistently higher in {higher}, "
            f"no verdict in {len(diff) - lower - higher} of {len(diff)} loss × head")


def collapse_verdicts(results: pd.DataFrame) -> list[str]:
    """Claim 2: blank runs and the collapse diagnostic, per loss × head."""
    runs = results[results.variant == "default"].copy()
    runs["blank"] = (runs.TP + runs.FP) == 0
    runs["fired"] = runs.diagnostics.fillna("").astype(str).str.contains("blank|collapse")
    lines = []
    for (loss, head), part in runs.groupby(["loss", "head"], sort=False):
        blank, fired = int(part.blank.sum()), int(part.fired.sum())
        missed, false_alarm = int((part.blank & ~part.fired).sum()), int((~part.blank & part.fired).sum())
        if blank == 0 and fired == 0:
            continue
        lines.append(f"- `{loss}` × {head}: {blank} of {len(part)} run(s) predicted nothing; the collapse "
                     f"diagnostic fired in {fired} (missed {missed}, fired on a non-blank run {false_alarm})")
    return lines or [f"- no run predicted nothing and no collapse diagnostic fired ({len(runs)} run(s))"]


def variant_verdicts(results: pd.DataFrame, a: str, b: str, columns: Sequence[str]) -> list[str]:
    """Claims 3 and 4: one decision against another on the same runs, per loss × head."""
    lines = []
    for column in columns:
        diff = paired_difference(results, column, "variant", a, b, within=("loss", "head"))
        for _, row in diff.iterrows():
            lines.append(f"- `{row.loss}` × {row['head']}: " + _say(row, column, a, b))
    return lines or [f"- no run has both the {a} and the {b} rows yet"]


def ranking(results: pd.DataFrame, variant: str = "tuned") -> list[str]:
    """Claim 5: mean lesion F1 per loss × head, and which are within the spread of the best."""
    runs = results[results.variant == variant]
    if runs.empty:
        return [f"- no `{variant}` rows yet"]
    runs = runs.assign(arm=runs["loss"].astype(str) + " × " + runs["head"].astype(str))
    means = runs.groupby("arm").lesion_f1.agg(["mean", "std", "count"]).sort_values("mean", ascending=False)
    unranked = [f"`{arm}`" for arm in means.index[means["count"] < MIN_PAIRS]]
    means = means[means["count"] >= MIN_PAIRS]  # a mean of one or two runs is one or two exams' luck
    if means.empty:
        return [f"- no loss × head has {MIN_PAIRS} `{variant}` runs yet"]
    best = str(means.index[0])
    lines = [f"- best mean lesion F1 ({variant}): `{best}` {means['mean'].iloc[0]:.3f} over "
             f"{int(means['count'].iloc[0])} run(s)"]
    close, below, few = [], [], []
    for arm in means.index[1:]:
        d = paired_difference(runs[runs.arm.isin([best, arm])], "lesion_f1", "arm", best, arm, within=())
        if not len(d) or d.pairs.iloc[0] < MIN_PAIRS:
            few.append(f"`{arm}`")
        elif d.clear.iloc[0]:
            below.append(f"`{arm}`")
        else:
            close.append(f"`{arm}`")
    if close:
        lines.append("- not told apart from it by paired runs (differences within their spread): " + ", ".join(close))
    if below:
        lines.append("- clearly below it: " + ", ".join(below))
    if few:
        lines.append(f"- fewer than {MIN_PAIRS} runs paired with it (no verdict yet): " + ", ".join(few))
    if unranked:
        lines.append(f"- not ranked yet (fewer than {MIN_PAIRS} runs): " + ", ".join(unranked))
    return lines


def write_verdicts(out: Path, results: pd.DataFrame, terms: pd.DataFrame | None) -> Path:
    """``STUDY/verdicts.md``: every claim answered from the rows there are (rerun as cells finish)."""
    sections = [
        ("1. Does softmax give more false lesions than sigmoid with the same loss? (default decision, "
         "paired by fold and seed)", head_tally(results, terms) + head_verdicts(results, terms)),
        ("2. Do losses collapse to blank predictions, and does the diagnostic say so?", collapse_verdicts(results)),
        ("3. What does averaging overlapping windows change? (default − no_overlap, same run)",
         [f"- {variant_tally(results, 'default', 'no_overlap', c)}" for c in ("FP", "TP")]
         + variant_verdicts(results, "default", "no_overlap", ["FP", "TP"])),
        ("4. What does the tuned threshold / minimum size change? (tuned − default, same run)",
         [f"- {variant_tally(results, 'tuned', 'default', c)}" for c in ("TP", "FP", "lesion_f1")]
         + variant_verdicts(results, "tuned", "default", ["TP", "FP", "lesion_f1"])),
        ("5. Which loss and head are best, and can the spread tell?", ranking(results)),
    ]
    n_runs = int((results.variant == results.variant.iloc[0]).sum())
    text = [f"# Loss study verdicts ({n_runs} run(s); computed by `lesionseg study --summarize`)", "",
            f"Paired differences: two runs sharing everything but what is compared; 'consistently' = at least "
            f"{MIN_PAIRS} pairs, every one agreeing in sign, and the mean difference above the pairs' sd.", ""]
    for title, lines in sections:
        text += [f"## {title}", "", *lines, ""]
    path = Path(out) / VERDICTS_FILE
    path.write_text("\n".join(text))
    return path
