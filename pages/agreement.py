"""Agreement: how often reviewers agree (Cohen's kappa per pair, Fleiss' kappa per class), and for admins the
blinded realism test (real cells rejected as fake, candidates passing as real)."""

import plotly.graph_objects as go
import streamlit as st

from pages.ui import frame, widgets
from wbc_core import auth
from wbc_core.agreement import agreement_report, realism_report

# Landis & Koch (1977), the usual words for kappa ranges.
KAPPA_WORDS = ((0.0, "poor"), (0.2, "slight"), (0.4, "fair"), (0.6, "moderate"), (0.8, "substantial"),
               (1.01, "almost perfect"))


def kappa_text(kappa: float | None) -> str:
    if kappa is None:
        return "n/a"
    word = next(w for limit, w in KAPPA_WORDS if kappa <= limit) if kappa > 0 else "poor"
    return f"{kappa:.2f} ({word})"


def pair_heatmap(pairs: list[dict]) -> go.Figure:
    """Symmetric reviewer x reviewer matrix of Cohen's kappa, with the shared candidates in the hover text."""
    names = sorted({p["reviewer_a"] for p in pairs} | {p["reviewer_b"] for p in pairs})
    index = {n: i for i, n in enumerate(names)}
    z = [[None] * len(names) for _ in names]
    text = [[""] * len(names) for _ in names]
    for p in pairs:
        a, b = index[p["reviewer_a"]], index[p["reviewer_b"]]
        z[a][b] = z[b][a] = p["kappa"]
        text[a][b] = text[b][a] = "n/a" if p["kappa"] is None else f"{p['kappa']:.2f}<br>n={p['n']}"
    fig = go.Figure(go.Heatmap(z=z, x=names, y=names, text=text, texttemplate="%{text}", zmin=-1, zmax=1,
                               colorscale="RdBu", colorbar={"title": "κ"},
                               hovertemplate="%{y} / %{x}: κ %{z:.2f}<extra></extra>"))
    fig.update_layout(title="Cohen's kappa per reviewer pair", height=120 + 60 * len(names), yaxis_autorange="reversed",
                      margin={"l": 10, "r": 10, "t": 50, "b": 10})
    return fig


user = frame.ensure_frame()
st.title("Agreement")
info = frame.require_dataset()
try:
    report = agreement_report(info.id, user=user)
except PermissionError as exc:
    widgets.show_error(exc)
    st.stop()

overall = report["overall"]
cols = st.columns(3)
cols[0].metric("Fleiss' kappa, all classes", kappa_text(overall["kappa"]))
cols[1].metric("Candidates with 2+ votes", f"{overall['items']:,}")
cols[2].metric("Reviewer pairs", len(report["pairs"]))
st.caption("Votes are accept, reject or relabel to a class (each target class is its own category); only the "
           "current vote of each reviewer counts. Kappa corrects raw agreement for chance: 1 is perfect agreement, "
           "0 what chance alone would give.")

if report["pairs"]:
    left, right = st.columns([1, 1])
    left.plotly_chart(pair_heatmap(report["pairs"]), width="stretch")
    right.subheader("Reviewer pairs")
    right.dataframe([{"reviewer A": p["reviewer_a"], "reviewer B": p["reviewer_b"], "shared candidates": p["n"],
                      "agreement": p["percent_agreement"], "Cohen's kappa": p["kappa"]} for p in report["pairs"]],
                    width="stretch", hide_index=True,
                    column_config={"agreement": st.column_config.NumberColumn(format="percent"),
                                   "Cohen's kappa": st.column_config.NumberColumn(format="%.3f")})
else:
    st.info("No two reviewers have decided the same candidates yet: agreement needs at least two reviewers.")

st.subheader("Per class (Fleiss' kappa)")
if report["classes"]:
    st.dataframe([{"class": c["class_name"], "candidates with 2+ votes": c["items"], "most raters": c["raters_max"],
                   "Fleiss' kappa": c["kappa"], "reading": kappa_text(c["kappa"])} for c in report["classes"]],
                 width="stretch", hide_index=True,
                 column_config={"Fleiss' kappa": st.column_config.NumberColumn(format="%.3f")})
else:
    st.caption("No candidate has two votes yet.")

if auth.can(user, "configure_review"):
    st.subheader("Blinded realism test (admins only)")
    realism = realism_report(info.id, user=user)
    if not realism["reviewers"]:
        st.caption("No reviewer is in a blind test on this dataset. Start one on the Admin page.")
    else:
        st.dataframe([{"reviewer": r["reviewer"], "real cells shown": r["real_shown"],
                       "real cells decided": r["real_decided"], "rejected as fake": r["real_rejected"],
                       "rejected-as-fake rate": r["rejected_as_fake_rate"]} for r in realism["reviewers"]],
                     width="stretch", hide_index=True,
                     column_config={"rejected-as-fake rate": st.column_config.NumberColumn(format="percent")})
        st.dataframe([{"class": c["class_name"], "candidates decided": c["candidates_decided"],
                       "candidates passing as real": c["candidate_pass_rate"], "real cells decided": c["real_decided"],
                       "real cells accepted": c["real_accept_rate"]} for c in realism["classes"]],
                     width="stretch", hide_index=True,
                     column_config={k: st.column_config.NumberColumn(format="percent")
                                    for k in ("candidates passing as real", "real cells accepted")})
        st.caption("A good generator brings the candidates' pass rate close to the real cells' accept rate. "
                   "Never show this table to reviewers in a running blind test.")
