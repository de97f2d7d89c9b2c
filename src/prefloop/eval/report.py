"""The run report: HTML and Markdown with PNG plots (matplotlib, Agg backend: no display needed).

Reads a PPO version's run history (runs/<ppo-run>/history.jsonl), the reward model's metrics
from the registry and an evaluation result (`prefloop.eval.evaluate.evaluate`). Plots: reward
and gold together over steps, KL, entropy, value loss, clip fraction, reward-model accuracy,
win-rates; then samples before (SFT) and after (PPO) side by side, and an over-optimization
check. Model output is untrusted: every sample is escaped before it reaches HTML or Markdown.
"""

from __future__ import annotations

import html
import json
import math
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

Series = tuple[list[float], list[float]]


# ---- data ---------------------------------------------------------------------------------


def read_history(run_dir: str | Path) -> list[dict[str, float]]:
    path = Path(run_dir) / "history.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def series(history: list[dict[str, float]], key: str, per_rollout: bool = False) -> Series:
    """(steps, values) of `key`; per_rollout keeps the first step of each rollout (rollout
    statistics repeat on every step of their rollout)."""
    xs, ys, seen = [], [], set()
    for row in history:
        if key not in row:
            continue
        if per_rollout:
            r = row.get("charts/rollout")
            if r in seen:
                continue
            seen.add(r)
        xs.append(float(row["step"]))
        ys.append(float(row[key]))
    return xs, ys


def _slope(ys: list[float]) -> tuple[float, float]:
    """Least-squares slope of ys against 0..n-1 and its standard error."""
    n = len(ys)
    if n < 3:
        return 0.0, math.inf
    mx, my = (n - 1) / 2, sum(ys) / n
    sxx = sum((i - mx) ** 2 for i in range(n))
    slope = sum((i - mx) * (y - my) for i, y in enumerate(ys)) / sxx
    resid = sum((y - my - slope * (i - mx)) ** 2 for i, y in enumerate(ys))
    return slope, math.sqrt(resid / (n - 2) / sxx)


def _gold_knee(gold: list[float], knee: float) -> int:
    """First rollout where gold (smoothed over 3 rollouts) reaches `knee` of its whole range."""
    smooth = [
        sum(gold[max(0, i - 1) : i + 2]) / len(gold[max(0, i - 1) : i + 2])
        for i in range(len(gold))
    ]
    level = min(smooth) + knee * (max(smooth) - min(smooth))
    return next(i for i, g in enumerate(smooth) if g >= level)


def over_optimization(
    history: list[dict[str, float]],
    knee: float = 0.95,
    min_move: float = 0.1,
    gold_share: float = 0.25,
) -> dict[str, Any]:
    """Reward-hacking check: does the reward-model score keep climbing after gold stopped?

    The window starts at gold's knee, the first rollout where gold (smoothed) reached `knee`
    of its whole range, and runs to the end; with fewer than 4 rollouts after the knee gold was
    still rising and nothing is flagged. In the window, each series' rise (linear-fit slope
    times the window's length) is divided by that series' range over the whole run, so the
    two scales compare. Flagged when the reward-model score still moves (rise > `min_move` of
    its range, beyond two standard errors) while gold, even taken optimistically (slope + two
    standard errors), rises by less than `gold_share` of that: gold flat, saturated or falling
    while the reward model keeps climbing.
    """
    _, score = series(history, "charts/score", per_rollout=True)
    _, gold = series(history, "charts/gold", per_rollout=True)
    if not gold or len(score) < 4 or len(gold) != len(score):
        why = "no gold scorer" if not gold else "too few rollouts"
        return {"checked": False, "flagged": False, "why": why}
    knee_at = _gold_knee(gold, knee)
    start = min(knee_at, len(score) - 4)
    n = len(score) - start
    s_slope, s_se = _slope(score[start:])
    g_slope, g_se = _slope(gold[start:])
    s_range = max(max(score) - min(score), 1e-9)
    g_range = max(max(gold) - min(gold), 1e-9)
    score_rel, gold_rel = s_slope * n / s_range, g_slope * n / g_range
    gold_rel_high = (g_slope + 2 * g_se) * n / g_range
    flagged = (
        knee_at <= len(score) - 4
        and score_rel > min_move
        and s_slope > 2 * s_se
        and gold_rel_high < gold_share * score_rel
    )
    return {
        "checked": True,
        "flagged": flagged,
        "window_start_rollout": start + 1,
        "rollouts_checked": n,
        "score_rise": s_slope * n,
        "gold_rise": g_slope * n,
        "score_rise_of_range": score_rel,
        "gold_rise_of_range": gold_rel,
    }


# ---- plots --------------------------------------------------------------------------------


def _plot_lines(path: Path, title: str, lines: dict[str, Series], ylabel: str = "") -> Path | None:
    lines = {k: v for k, v in lines.items() if v[0]}
    if not lines:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.4))
    for label, (xs, ys) in lines.items():
        ax.plot(xs, ys, label=label, marker="." if len(xs) < 40 else None)
    ax.set(title=title, xlabel="optimizer step", ylabel=ylabel)
    ax.grid(alpha=0.3)
    if len(lines) > 1:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plot_reward_gold(path: Path, history: list[dict[str, float]]) -> Path | None:
    """Reward-model score and gold on one chart (two y axes): over-optimization shows as a gap."""
    sx, sy = series(history, "charts/score", per_rollout=True)
    gx, gy = series(history, "charts/gold", per_rollout=True)
    if not sx:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.4))
    ax.plot(sx, sy, color="tab:blue", marker=".", label="reward model")
    ax.set(title="reward-model score and gold over training", xlabel="optimizer step")
    ax.set_ylabel("reward-model score", color="tab:blue")
    if gx:
        ax2 = ax.twinx()
        ax2.plot(gx, gy, color="tab:green", marker=".", label="gold")
        ax2.set_ylabel("gold score", color="tab:green")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plot_bars(
    path: Path,
    title: str,
    bars: dict[str, tuple[float | None, float | None, float | None]],
    ylim: tuple[float, float] = (0, 1),
) -> Path | None:
    """Bars with optional [low, high] intervals; a dashed line at 0.5 (chance)."""
    kept = {k: v for k, v in bars.items() if v[0] is not None}
    if not kept:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.0))
    names = list(kept)
    values = [float(kept[n][0] or 0.0) for n in names]
    low, high = [], []
    for n, v in zip(names, values, strict=True):
        lo, hi = kept[n][1], kept[n][2]
        low.append(v - lo if lo is not None else 0.0)
        high.append(hi - v if hi is not None else 0.0)
    ax.bar(names, values, yerr=[low, high], capsize=6, color="tab:purple", alpha=0.8, width=0.5)
    ax.axhline(0.5, color="grey", linestyle="--", linewidth=1)
    ax.set(title=title, ylim=ylim)
    for i, v in enumerate(values):
        ax.text(i, v / 2, f"{v:.3f}", ha="center", color="white", fontweight="bold")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def make_plots(
    out: Path,
    history: list[dict[str, float]],
    rm_metrics: dict[str, Any],
    evaluation: dict[str, Any] | None,
) -> dict[str, Path]:
    h = history
    plots = {
        "reward and gold": _plot_reward_gold(out / "reward_gold.png", h),
        "KL to reference": _plot_lines(
            out / "kl.png",
            "KL to the reference (nats per response)",
            {"k1": series(h, "charts/kl_k1", True), "k3": series(h, "charts/kl_k3", True)},
        ),
        "entropy": _plot_lines(
            out / "entropy.png",
            "policy entropy (nats per token)",
            {"rollout": series(h, "charts/entropy", True)},
        ),
        "value loss": _plot_lines(
            out / "value_loss.png", "value loss", {"value loss": series(h, "loss/value")}
        ),
        "clip fraction": _plot_lines(
            out / "clipfrac.png",
            "PPO clip fraction and approx KL",
            {
                "clip fraction": series(h, "charts/clipfrac"),
                "approx KL (old‖new)": series(h, "charts/approx_kl"),
            },
        ),
        "reward-model accuracy": _plot_bars(
            out / "rm_accuracy.png",
            "reward-model held-out accuracy",
            {
                "vs labels": (rm_metrics.get("accuracy"), None, None),
                "vs gold": (rm_metrics.get("accuracy_gold"), None, None),
            },
        ),
    }
    if evaluation:
        wr = evaluation["win_rate"]
        label = f"{evaluation['a']} vs {evaluation['b']}"
        plots["win-rate"] = _plot_bars(
            out / "winrate.png",
            f"win-rate ({evaluation['judge']} judge, 95% CI)",
            {label: (wr["rate"], wr["ci_low"], wr["ci_high"])},
        )
    return {k: v for k, v in plots.items() if v is not None}


# ---- the document -------------------------------------------------------------------------


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3f}"
    return "-" if v is None else str(v)


def _md(text: Any) -> str:
    """Untrusted text as one Markdown table cell: HTML escaped, table/emphasis syntax inert."""
    s = html.escape(str(text)).replace("\n", " ")
    for ch in "\\|*_`[]#":
        s = s.replace(ch, "\\" + ch)
    return s


def _tables(
    version: Any,
    evaluation: dict[str, Any] | None,
    overopt: dict[str, Any],
    metrics: dict[str, Any] | None,
    samples: list[list[dict[str, Any]]],
) -> list[tuple[str, list[str], list[list[Any]]]]:
    """(title, header, rows) of every table, shared by the HTML and Markdown renderings."""
    tables = []
    if metrics:
        tables.append(
            ("Pipeline metrics", ["metric", "value"], [[k, v] for k, v in metrics.items()])
        )
    if evaluation:
        cols = ["reward", "gold", "kl_to_ref", "length", "eos_rate"]
        rows = [[name, *(m.get(c) for c in cols)] for name, m in evaluation["models"].items()]
        tables.append(
            (f"Held-out evaluation ({evaluation['prompts']} prompts)", ["model", *cols], rows)
        )
        wr = evaluation["win_rate"]
        tables.append(
            (
                "Win-rate",
                ["A", "B", "judge", "win-rate", "95% CI", "wins/ties/losses"],
                [
                    [
                        evaluation["a"],
                        evaluation["b"],
                        evaluation["judge"],
                        wr["rate"],
                        f"[{wr['ci_low']:.3f}, {wr['ci_high']:.3f}]",
                        f"{int(wr['wins'])}/{int(wr['ties'])}/{int(wr['losses'])}",
                    ]
                ],
            )
        )
    final = version.meta.get("metrics", {})
    tables.append(
        (
            f"PPO run {version.name} (last rollout)",
            ["metric", "value"],
            [[k, v] for k, v in final.items()],
        )
    )
    verdict = (
        "FLAGGED: reward-model score rose while gold stayed flat or fell"
        if overopt["flagged"]
        else "not flagged"
        if overopt["checked"]
        else f"not checked ({overopt['why']})"
    )
    rows = [["verdict", verdict]] + [
        [k, overopt[k]]
        for k in (
            "score_rise",
            "gold_rise",
            "score_rise_of_range",
            "gold_rise_of_range",
            "rollouts_checked",
        )
        if k in overopt
    ]
    tables.append(("Over-optimization check (from the gold knee to the end)", ["", ""], rows))
    if evaluation and evaluation.get("samples"):
        keys = [
            k for k in ("gold_b", "gold_a", "reward_b", "reward_a") if k in evaluation["samples"][0]
        ]
        tables.append(
            (
                f"Samples: before ({evaluation['b']}) and after ({evaluation['a']})",
                ["prompt", f"before: {evaluation['b']}", f"after: {evaluation['a']}", *keys],
                [
                    [s["prompt"], s["b"], s["a"], *(s[k] for k in keys)]
                    for s in evaluation["samples"]
                ],
            )
        )
    if len(samples) == 2:
        first, last = samples[0][:6], samples[1][:6]
        tables.append(
            (
                "Rollout samples: first and last PPO rollout",
                ["prompt", "first", "score", "last", "score"],
                [
                    [a["prompt"], a["response"], a["score"], b["response"], b["score"]]
                    for a, b in zip(first, last, strict=False)
                ],
            )
        )
    return tables


def _html(title: str, tables: list[Any], plots: dict[str, Path], flagged: bool) -> str:
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; img-src 'self'; "
        "style-src 'unsafe-inline'\">",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;"
        "vertical-align:top;text-align:left}"
        ".flag{background:#fdd;padding:.5em;border:1px solid #c00}"
        "img{max-width:48%;margin:.5%}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    if flagged:
        parts.append(
            "<p class='flag'>Over-optimization: the reward-model score kept rising while the "
            "gold score stayed flat or fell (see the check below).</p>"
        )
    parts.append("<h2>Plots</h2>")
    parts += [f"<img src='{html.escape(p.name)}' alt='{html.escape(k)}'>" for k, p in plots.items()]
    for name, header, rows in tables:
        parts.append(f"<h2>{html.escape(name)}</h2><table><tr>")
        parts += [f"<th>{html.escape(str(h))}</th>" for h in header]
        parts.append("</tr>")
        for row in rows:
            parts.append(
                "<tr>" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in row) + "</tr>"
            )
        parts.append("</table>")
    parts.append(
        f"<p><small>written {time.strftime('%Y-%m-%d %H:%M:%S')} by prefloop</small></p>"
        "</body></html>"
    )
    return "\n".join(parts)


def _markdown(title: str, tables: list[Any], plots: dict[str, Path], flagged: bool) -> str:
    lines = [f"# {_md(title)}", ""]
    if flagged:
        lines += [
            "**Over-optimization flagged**: reward-model score up while gold flat or down.",
            "",
        ]
    lines += [f"![{k}]({p.name})" for k, p in plots.items()]
    for name, header, rows in tables:
        lines += [
            "",
            f"## {_md(name)}",
            "",
            "| " + " | ".join(_md(h) for h in header) + " |",
            "|" + "---|" * len(header),
        ]
        lines += ["| " + " | ".join(_md(_fmt(c)) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_report(
    ws: Any,
    *,
    ppo: str = "latest:ppo",
    evaluation: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    out_dir: str | Path | None = None,
) -> Path:
    """Write report.html, report.md and the PNG plots; returns the HTML path."""
    path = ws.resolve(ppo)
    version = ws.get(ws.version_of(path) or Path(path).name)
    run_dir = Path(version.meta.get("run_dir", ""))
    history = read_history(run_dir)
    rm_metrics: dict[str, Any] = {}
    for name in version.meta.get("reward_versions", []):
        rm_metrics = ws.get(name).meta.get("metrics", {})
        break
    samples_file = run_dir / "samples.json"
    samples = json.loads(samples_file.read_text()) if samples_file.exists() else []
    out = Path(out_dir) if out_dir else ws.reports_dir / f"report-{version.name}"
    out.mkdir(parents=True, exist_ok=True)
    plots = make_plots(out, history, rm_metrics, evaluation)
    overopt = over_optimization(history)
    tables = _tables(version, evaluation, overopt, metrics, samples)
    title = f"prefloop report: {version.name} (from {version.meta.get('parent')})"
    (out / "report.md").write_text(_markdown(title, tables, plots, overopt["flagged"]))
    (out / "report.html").write_text(_html(title, tables, plots, overopt["flagged"]))
    (out / "report.json").write_text(
        json.dumps(
            {
                "version": version.name,
                "evaluation": evaluation,
                "over_optimization": overopt,
                "metrics": metrics,
                "final": version.meta.get("metrics", {}),
            },
            indent=2,
            default=str,
        )
    )
    return out / "report.html"
