"""Review: accept or reject candidates of one class, next to real cells of that class."""

import streamlit as st

from pages import common
from wbc_core import datasets as data_service
from wbc_core import review
from wbc_core.settings import wbc_home

PAGE_SIZE = 48
COLUMNS = 8

common.ensure_frame()
st.title("Review")
if "review_toast" in st.session_state:  # set just before an st.rerun(), shown on the run after it
    st.toast(st.session_state.pop("review_toast"))
info = common.require_dataset()
reviewer = (st.session_state.get("reviewer") or "").strip()
if not reviewer:
    reviewer = st.text_input("Your name (recorded with every decision)", key="reviewer_inline").strip()
    if not reviewer:
        st.info("Enter your name to start reviewing.")
        st.stop()

summary = review.class_summary(info.id)
cols = st.columns([2, 2, 1])
# Plain class names as options: a label that carries live counts changes after every decision, and
# Streamlit then treats the selectbox as a new widget and jumps back to the first class.
class_name = cols[0].selectbox("Class", info.class_names, key="review_class")
state = cols[1].segmented_control("Show", ["pending", "decided", "all"], default="pending") or "pending"
page = int(cols[2].number_input("Page", 0, 10_000, 0))
if summary:
    st.caption("Pending per class: " + " · ".join(f"{row['class_name']} {row['pending']}" for row in summary))

atlas = data_service.sample_paths(info.id, class_name, n=12)
if atlas:
    st.caption("Real cells of this class (atlas)")
    st.image([str(p) for p in atlas], width=64)

items, total = review.queue_page(info.id, class_name, reviewer, state=state, page=page, page_size=PAGE_SIZE)
st.write(f"**{total}** {state} candidates of **{class_name}** for **{reviewer}**")
ids = [item["id"] for item in items]

actions = st.columns(4)
if actions[0].button("Accept page", shortcut="a", disabled=not ids, type="primary"):
    review.decide(ids, reviewer, "accept")
    st.rerun()
if actions[1].button("Reject page", shortcut="x", disabled=not ids):
    review.decide(ids, reviewer, "reject")
    st.rerun()
if actions[2].button("Undo last", shortcut="u"):
    undone = review.undo_last(info.id, reviewer)
    st.session_state["review_toast"] = f"undid decision on candidate {undone[0]}" if undone else "nothing to undo"
    st.rerun()

for start in range(0, len(items), COLUMNS):
    row = st.columns(COLUMNS)
    for col, item in zip(row, items[start:start + COLUMNS], strict=False):
        with col:
            st.image(str(wbc_home() / item["path"]), width="stretch")
            verdict = item["verdict"] if item["verdict"] != "undo" else None
            st.caption(f"#{item['id']}" + (f" · {verdict}" if verdict else ""))
            a, r = st.columns(2)
            if a.button("✓", key=f"acc_{item['id']}", help="accept"):
                review.decide([item["id"]], reviewer, "accept")
                st.rerun()
            if r.button("✗", key=f"rej_{item['id']}", help="reject"):
                review.decide([item["id"]], reviewer, "reject")
                st.rerun()

if total == 0:
    st.success("Nothing left here. Pick another class, or generate more candidates on the Generate page.")
st.dataframe(summary, width="stretch", hide_index=True)
