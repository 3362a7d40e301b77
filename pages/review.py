"""Review: decide candidates of one class from the keyboard, next to real cells of that class.

Keys (shown on each button): arrows move the cursor, a accepts, x rejects, 1-6 reject with a reason,
Shift+1..9 relabel to class 1..9, s toggles selection, Shift+A / Shift+X decide the selection,
Alt+A / Alt+X decide the whole page, n / p next / previous page, u undoes the last action.

The work area (grid, detail, actions, quota gauge) is one st.fragment: a decision reruns only that part.
Blind realism test: real val cells may sit among the candidates unannounced, so nothing here shows image ids
or provenance to non-admins, and widget keys are grid positions, never image ids (keys end up in the page).
"""

from __future__ import annotations

import math
import os
import time

import streamlit as st

from pages.ui import frame, refresh, signin, widgets
from wbc_core import auth, catalog, cell_detail, context, importing, review_model
from wbc_core.thumbnails import thumbnail_path

PAGE_SIZE = 48
COLUMNS = 8
ATLAS_SIZE = 12
DETAIL_NEIGHBOURS = 5  # nearest real train cells shown next to the cursor cell
# The quota gauge's consensus counts are shared by all sessions and refreshed in the background at most this often:
# class_summary costs ~0.3 s at 100k candidates and 20k decisions, too much for every key press.
SUMMARY_MAX_AGE_S = 10.0
ORDER_LABELS = {
    "id": "Oldest first",
    "judge_prob_desc": "Classifier agrees most",
    "judge_prob_asc": "Classifier agrees least",
    "nearest_real_desc": "Farthest from real cells",
    "nearest_real_asc": "Closest to real cells (possible copies)",
}
REASON_LABELS = ("morphology", "nucleus/granules", "stain", "GAN texture", "broken", "too close to real")
VERDICT_MARKS = {"accept": "✓ accepted", "reject": "✗ rejected", "relabel": "↦ relabelled"}


# -- callbacks (run before the rerun they trigger, so the grid drawn after them is already up to date) ------------


def _state() -> dict:
    return st.session_state


def _decide(user: auth.User, ids: list[int], verdict: str, new_class: str | None = None, reason: str | None = None,
            advance: int = 0) -> None:
    s = _state()
    if not ids:
        return
    try:
        review_model.decide(ids, user.username, verdict, new_class=new_class, reason=reason, user=user)
    except (PermissionError, ValueError) as exc:  # PermissionDenied, ReviewError
        s["rv_error"] = str(exc)
        return
    s["rv_undo_stack"] = [*s.get("rv_undo_stack", []), len(ids)]
    s["rv_selected"] = [i for i in s.get("rv_selected", []) if i not in set(ids)]
    s["rv_cursor"] = s.get("rv_cursor", 0) + advance
    what = {"accept": "accepted", "reject": "rejected", "relabel": f"relabelled to {new_class}"}[verdict]
    s["rv_msg"] = f"{what} {len(ids)} cell{'s' if len(ids) != 1 else ''}" + (f" ({reason})" if reason else "")


def _undo(user: auth.User, dataset_id: int) -> None:
    s = _state()
    stack = list(s.get("rv_undo_stack", []))
    n = stack.pop() if stack else 1
    try:
        undone = review_model.undo_last(dataset_id, user.username, n, user=user)
    except (PermissionError, ValueError) as exc:
        s["rv_error"] = str(exc)
        return
    s["rv_undo_stack"] = stack
    s["rv_focus"] = undone[-1] if undone else None  # the oldest of the batch: put the cursor back on it
    s["rv_msg"] = f"undid {len(undone)} decision{'s' if len(undone) != 1 else ''}" if undone else "nothing to undo"


def _move(delta: int, n_items: int, pages: int) -> None:
    """Move the cursor; stepping past either end of the page turns the page."""
    s = _state()
    target = s.get("rv_cursor", 0) + delta
    page = s.get("rv_page", 0)
    if target >= n_items:
        if page + 1 < pages:
            s["rv_page"], target = page + 1, 0
        else:
            target = n_items - 1
    elif target < 0:
        if page > 0:
            s["rv_page"], target = page - 1, PAGE_SIZE - 1
        else:
            target = 0
    s["rv_cursor"] = max(target, 0)  # clamped to the page's cells when the grid is drawn


def _turn(delta: int, pages: int) -> None:
    s = _state()
    s["rv_page"] = max(0, min(s.get("rv_page", 0) + delta, pages - 1))
    s["rv_cursor"] = 0


def _goto(index: int) -> None:
    _state()["rv_cursor"] = index


def _toggle(image_id: int | None) -> None:
    if image_id is None:
        return
    selected = list(_state().get("rv_selected", []))
    _state()["rv_selected"] = [i for i in selected if i != image_id] if image_id in selected else [*selected, image_id]


def _clear_selection() -> None:
    _state()["rv_selected"] = []


# -- page --------------------------------------------------------------------------------------------------------

user = frame.ensure_frame()
st.title("Review")
info = frame.require_dataset()
may_review = auth.can(user, "review")
is_admin = auth.can(user, "configure_review")  # sees ids and provenance; the blind test is theirs to run

head = st.columns([2, 2, 2, 1, 1] if is_admin else [2, 2, 2])
# Plain class names as options: a label that carries live counts changes after every decision, and
# Streamlit then treats the selectbox as a new widget and jumps back to the first class.
class_name = head[0].selectbox("Class", info.class_names, key="review_class")
state = head[1].segmented_control("Show", list(review_model.QUEUE_STATES), default="pending", key="review_state") \
    or "pending"
order = head[2].selectbox("Order", list(review_model.QUEUE_ORDERS), format_func=ORDER_LABELS.get, key="review_order")
gan_run_id = step = None
if is_admin:
    # Filters by generator run are admin-only: a filtered queue leaves the blind real cells out, so comparing
    # it with the full queue would point a reviewer at the real cells of a blinded realism test.
    gan_runs = catalog.gan_run_ids(info.id)
    gan_run_id = head[3].selectbox("GAN run", [None, *gan_runs], format_func=lambda r: "all" if r is None else f"#{r}",
                                   key="review_run")
    steps = catalog.checkpoint_steps(gan_run_id) if gan_run_id is not None else []
    step = head[4].selectbox("Checkpoint", [None, *steps], format_func=lambda s: "all" if s is None else str(s),
                             key="review_step", disabled=gan_run_id is None)

queue_key = (info.id, class_name, state, order, gan_run_id, step, user.username)
if st.session_state.get("rv_qkey") != queue_key:  # another queue: start at its top
    st.session_state.update(rv_qkey=queue_key, rv_page=0, rv_cursor=0, rv_selected=[], rv_focus=None)


@st.cache_resource
def _thumb_paths() -> dict:
    return {}


def _thumb(item, size: int, home: str | None = None) -> str | None:  # noqa: ANN001
    """The cached thumbnail file of an image (queue row or path), or None when its file is missing.

    Thumbnails are named by content hash and never change, so their paths are remembered per server process:
    looking them up again costs ~1 ms per cell (WBC_HOME is resolved on every call), 48 times per click.
    """
    key = (home or str(context.current().home), str(item["path"] if isinstance(item, dict) else item),
           item.get("sha256") if isinstance(item, dict) else None, size)
    known = _thumb_paths()
    path, checked = known.get(key, (None, 0.0))
    # Re-checked once a minute: a cleared thumbnail cache then heals without a server restart.
    if path is None or (time.monotonic() - checked > 60 and not os.path.isfile(path)):
        try:
            path = str(thumbnail_path(item, size))
        except (OSError, ValueError):  # a missing or unreadable file: show the rest
            return None
        if len(known) > 200_000:
            known.clear()
    if path is not None and (time.monotonic() - checked > 60):
        known[key] = (path, time.monotonic())
    return path


atlas = [t for t in (_thumb(p, 96) for p in importing.sample_paths(info.id, class_name, n=ATLAS_SIZE)) if t]
if atlas:
    st.caption(f"Real **{widgets.plain(class_name)}** cells (train split), for comparison")
    st.image(atlas, width=56, output_format="PNG")
if not may_review:
    signin.require_permission("review", "record decisions (read-only view)")


def _mark(item: dict) -> str:
    verdict = item.get("verdict")
    if verdict in (None, "undo"):
        return ""
    if verdict == "relabel":
        return f"↦ {item['new_class']}"
    if verdict == "reject" and item.get("reason"):
        return f"✗ {item['reason']}"
    return VERDICT_MARKS[verdict]


def _quota(summary: list[dict]) -> None:
    row = next((r for r in summary if r["class_name"] == class_name), None)
    if row is None or not row["quota"]:
        st.caption("No quota for this class" + (" (set one on the Admin page)." if is_admin else "."))
        return
    done, quota = row["accepted_final"], row["quota"]
    st.progress(min(done / quota, 1.0), text=f"Quota {class_name}: **{done} / {quota}** accepted "
                "(consensus of all reviewers; refreshed every few seconds)")
    if row["quota_met"]:
        open_classes = [r["class_name"] for r in summary if r["quota"] and not r["quota_met"]]
        st.success(f"Quota met for **{widgets.plain(class_name)}**: {done} of {quota} accepted. "
                   + (f"Classes still short: {', '.join(open_classes)}." if open_classes else "All quotas are met."),
                   icon="🎯")


def _highlight(cursor: int, chosen_positions: list[int]) -> None:
    """Outline the cursor cell (solid) and the selected cells (dashed) by their position keys."""
    rules = [f".st-key-rv_cell_{cursor} img {{outline: 4px solid #ff4b4b; outline-offset: 2px;}}"]
    rules += [f".st-key-rv_cell_{i} img {{box-shadow: 0 0 0 4px #1c83e1;}}" for i in chosen_positions]
    st.html("<style>" + "\n".join(rules) + "</style>")


def _actions(current: dict | None, ids: list[int], selected: list[int], advance: int) -> None:
    """Decision buttons for the cursor cell, the selection and the page (reviewers and admins only)."""
    one = [current["id"]] if current else []
    none = current is None
    row = st.container(horizontal=True, gap="small")
    row.button("Accept", key="rv_accept", shortcut="a", type="primary", disabled=none, on_click=_decide,
               args=(user, one, "accept"), kwargs={"advance": advance})
    row.button("Reject", key="rv_reject", shortcut="x", disabled=none, on_click=_decide,
               args=(user, one, "reject"), kwargs={"advance": advance})
    row.button("Undo", key="rv_undo", shortcut="u", on_click=_undo, args=(user, info.id), icon=":material/undo:")
    st.caption("Reject because")
    reasons = st.container(horizontal=True, gap="small")
    for n, short in enumerate(REASON_LABELS, start=1):
        reasons.button(f"{n} {short}", key=f"rv_reason_{n}", shortcut=str(n), disabled=none,
                       help=f"reject: {review_model.reject_reason(n)}", on_click=_decide, args=(user, one, "reject"),
                       kwargs={"reason": review_model.reject_reason(n), "advance": advance})
    st.caption("Relabel to")
    relabel = st.container(horizontal=True, gap="small")
    for n, other in enumerate(info.class_names, start=1):
        if other != class_name:
            relabel.button(f"↦ {other}", key=f"rv_relabel_{n}", shortcut=f"Shift+{n}" if n <= 9 else None,
                           disabled=none, on_click=_decide, args=(user, one, "relabel"),
                           kwargs={"new_class": other, "advance": advance})
    st.caption(f"Selection ({len(selected)}) and page")
    bulk = st.container(horizontal=True, gap="small")
    bulk.button("Select", key="rv_select", shortcut="s", disabled=none, on_click=_toggle,
                args=(current["id"] if current else None,), help="toggle selection of the cursor cell")
    bulk.button("Accept selected", key="rv_accept_sel", shortcut="Shift+A", disabled=not selected,
                on_click=_decide, args=(user, selected, "accept"))
    bulk_reason = st.session_state.get("rv_bulk_reason")
    bulk.button("Reject selected", key="rv_reject_sel", shortcut="Shift+X", disabled=not selected,
                on_click=_decide, args=(user, selected, "reject"), kwargs={"reason": bulk_reason})
    bulk.button("Clear", key="rv_clear_sel", shortcut="Shift+S", disabled=not selected, on_click=_clear_selection,
                help="clear the selection")
    bulk.button("Accept page", key="rv_accept_page", shortcut="Alt+A", disabled=not ids,
                on_click=_decide, args=(user, ids, "accept"))
    bulk.button("Reject page", key="rv_reject_page", shortcut="Alt+X", disabled=not ids,
                on_click=_decide, args=(user, ids, "reject"), kwargs={"reason": bulk_reason})
    st.selectbox("Reason for bulk rejects", [None, *review_model.REJECT_REASONS], key="rv_bulk_reason",
                 format_func=lambda r: "no reason" if r is None else r)


@st.cache_data(ttl=60, show_spinner=False, max_entries=2000)
def _cell_detail(home: str, image_id: int) -> dict | None:
    """Judge probabilities and nearest real train cells of one cell (None until a judge is cached)."""
    return cell_detail.candidate_detail(image_id, k=DETAIL_NEIGHBOURS)


def _detail_view(current: dict, home: str) -> None:
    """Class probabilities of the real-only classifier and the nearest real train cells, with distances.

    Looked up the same way for a blind real cell as for a candidate; no ids for non-admins.
    """
    detail = _cell_detail(home, int(current["id"]))
    if detail is None:
        st.caption("Class probabilities and the nearest real cells appear once candidates are scored on the "
                   "Generate page.")
        return
    with st.container(key="rv_detail"):
        st.caption("Real-only classifier: class probabilities")
        st.plotly_chart(cell_detail.probabilities_figure(detail["probabilities"]), key="rv_probs",
                        config={"displayModeBar": False, "staticPlot": True}, width="stretch")
        shown = [(t, n) for t, n in ((_thumb(n["path"], 96, home), n) for n in detail["neighbours"]) if t]
        if shown:
            st.caption("Nearest real train cells (classifier feature distance)")
            st.image([t for t, _ in shown], width=72, output_format="PNG",
                     caption=[f"{n['class_name']} · {n['distance']:.2f}" + (f" · #{n['image_id']}" if is_admin else "")
                              for _, n in shown])


@st.fragment
def work_area() -> None:
    s = st.session_state
    home = str(context.current().home)
    if s.get("rv_error"):
        st.error(s.pop("rv_error"), icon="🚫")
    if s.get("rv_msg"):
        st.toast(s.pop("rv_msg"))
    page = s.get("rv_page", 0)
    items, total = review_model.queue_page(info.id, class_name, user.username, state=state, page=page,
                                           page_size=PAGE_SIZE, order=order, gan_run_id=gan_run_id,
                                           checkpoint_step=step)
    pages = max(1, math.ceil(total / PAGE_SIZE))
    if page >= pages:  # decided the last cells of the last page: show the page before it
        page = s["rv_page"] = pages - 1
        items, total = review_model.queue_page(info.id, class_name, user.username, state=state, page=page,
                                         page_size=PAGE_SIZE, order=order, gan_run_id=gan_run_id,
                                         checkpoint_step=step)
    ids = [item["id"] for item in items]
    focus = s.pop("rv_focus", None)
    if focus in ids:
        s["rv_cursor"] = ids.index(focus)
    cursor = s["rv_cursor"] = max(0, min(s.get("rv_cursor", 0), len(items) - 1))
    current = items[cursor] if items else None
    selected = list(s.get("rv_selected", []))
    chosen = set(selected)
    # In the pending view a decided cell leaves the grid and the next one slides under the cursor; elsewhere
    # the cursor steps on by itself.
    advance = 0 if state == "pending" else 1

    _quota(refresh.recent(f"class_summary:{info.id}", lambda ds=info.id: review_model.class_summary(ds),
                          SUMMARY_MAX_AGE_S))
    st.markdown(f"**{total}** {state} candidates of **{widgets.plain(class_name)}** for "
                f"**{widgets.plain(user.label)}** · page {page + 1} of {pages} · "
                f"{review_model.decision_rate(user.username):.0f} cells/min in the last 5 minutes")

    _highlight(cursor, [i for i, item in enumerate(items) if item["id"] in chosen])
    grid_col, detail_col = st.columns([3, 2])
    with grid_col, st.container(key="review_grid"):
        for start in range(0, len(items), COLUMNS):
            row = st.columns(COLUMNS, gap="small")
            for col, (i, item) in zip(row, enumerate(items[start:start + COLUMNS], start=start), strict=False):
                with col, st.container(key=f"rv_cell_{i}", gap=None):
                    thumb = _thumb(item, 96, home)
                    if thumb:  # PNG as stored: "auto" would re-encode every thumbnail as JPEG on every rerun
                        st.image(thumb, width="stretch", output_format="PNG")
                    else:
                        st.caption("image file missing")
                    marks = ["▶" if i == cursor else "", "☑" if item["id"] in chosen else "", _mark(item)]
                    if is_admin:
                        marks.append(f"#{item['id']}")
                    st.button(" ".join(m for m in marks if m) or "·", key=f"rv_go_{i}", on_click=_goto, args=(i,),
                              help="put the cursor here", width="stretch", type="tertiary")
        if not items:
            st.success(f"Nothing {state} here for you. Pick another class"
                       + (", or generate more candidates on the Generate page." if state == "pending" else "."))

    with detail_col:
        if current is not None:
            big = _thumb(current, 256, home)
            if big:
                st.image(big, width=256, output_format="PNG")
            st.caption(f"Cell {cursor + 1} of {len(items)} on page {page + 1}"
                       + (" · selected" if current["id"] in chosen else "")
                       + (f" · your verdict: {_mark(current)}" if _mark(current) else ""))
            scores = []
            if current.get("judge_prob") is not None:
                scores.append(f"Real-only classifier: P({class_name}) **{current['judge_prob']:.2f}**")
            if current.get("nearest_real_distance") is not None:
                scores.append(f"nearest real train cell at distance **{current['nearest_real_distance']:.2f}**")
            st.caption(" · ".join(scores) if scores else "No classifier scores for this cell.")
            _detail_view(current, home)
            if is_admin:
                st.caption(f"id {current['id']} · GAN run {current.get('gan_run_id')} · "
                           f"step {current.get('checkpoint_step')}")
        nav = st.container(horizontal=True, gap="small")
        nav.button("←", key="rv_left", shortcut="Left", on_click=_move, args=(-1, len(items), pages),
                   help="previous cell")
        nav.button("→", key="rv_right", shortcut="Right", on_click=_move, args=(1, len(items), pages), help="next cell")
        nav.button("↑", key="rv_up", shortcut="Up", on_click=_move, args=(-COLUMNS, len(items), pages), help="row up")
        nav.button("↓", key="rv_down", shortcut="Down", on_click=_move, args=(COLUMNS, len(items), pages),
                   help="row down")
        nav.button("Prev page", key="rv_prev_page", shortcut="p", on_click=_turn, args=(-1, pages),
                   disabled=page == 0)
        nav.button("Next page", key="rv_next_page", shortcut="n", on_click=_turn, args=(1, pages),
                   disabled=page + 1 >= pages)
        if may_review:
            _actions(current, ids, selected, advance)


work_area()

with st.expander("Keyboard"):
    st.markdown(
        "| key | action |\n|---|---|\n"
        "| ← → ↑ ↓ | move the cursor (past the page edge turns the page) |\n"
        "| a / x | accept / reject the cursor cell |\n"
        "| 1 - 6 | reject the cursor cell with reason 1-6 |\n"
        "| Shift+1..9 | relabel the cursor cell to class 1..9 |\n"
        "| s / Shift+S | toggle selection of the cursor cell / clear the selection |\n"
        "| Shift+A / Shift+X | accept / reject the selected cells |\n"
        "| Alt+A / Alt+X | accept / reject every cell on the page |\n"
        "| n / p | next / previous page |\n"
        "| u | undo the last action (a whole bulk action at once) |\n"
        "\nShortcuts pause while a text field or select box has the focus: click the page background first."
    )

with st.expander("Progress per class and reviewer"):
    summary = refresh.recent(f"class_summary:{info.id}", lambda ds=info.id: review_model.class_summary(ds))
    if is_admin:
        st.dataframe(summary, width="stretch", hide_index=True)
    else:  # counts of candidates would let a blind-mode reviewer size the real cells mixed into their queue
        st.dataframe([{k: r[k] for k in ("class_name", "accepted_final", "quota", "quota_met")} for r in summary],
                     width="stretch", hide_index=True)
    progress = refresh.recent(f"reviewer_progress:{info.id}", lambda ds=info.id: review_model.reviewer_progress(ds))
    keep = ("reviewer", "class_name", "decided", "accepted", "rejected", "relabelled")
    st.dataframe(progress if is_admin else [{k: r[k] for k in keep} for r in progress], width="stretch",
                 hide_index=True)
