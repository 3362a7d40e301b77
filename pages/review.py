"""Review: decide candidates of one class from the keyboard, next to real cells of that class.

Keys (shown on each button): arrows move the cursor, a accepts, x rejects, 1-6 reject with a reason,
Shift+1..9 relabel to class 1..9, s toggles selection, Shift+A / Shift+X decide the selection,
Alt+A / Alt+X decide the whole page, n / p next / previous page, u undoes the last action.

The work area (grid, detail, toolbar, quota gauge, progress tables) is one st.fragment: a decision reruns only
that part. Layout: the grid (cells at the Cell size setting, 96/128/192 px, thumbnails made once per size) with the
real-cell atlas under it at the same size, and beside it the cursor cell at 320+ px in native pixels (zoom 1x/2x/4x)
over a compact toolbar; at 1920x1080 all of that shows without scrolling (tests/e2e/test_review_layout.py).
Blind realism test: real val cells may sit among the candidates unannounced, so nothing here shows image ids
or provenance to non-admins, and widget keys are grid positions, never image ids (keys end up in the page).
"""

from __future__ import annotations

import math

import streamlit as st

from pages.ui import frame, refresh, signin, widgets
from pages.ui import review_look as look
from wbc_core import auth, catalog, cell_detail, context, embedding_selection, feedback, importing, review_model

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
            s["rv_page"], target = page - 1, look.PAGE_SIZE - 1
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

look.page_css()
# Candidates handed over from the Dashboard's embedding map (box or lasso): the queue shows exactly those.
handed = embedding_selection.handed_over(st.session_state.get(embedding_selection.HANDOVER_KEY), info.id)
filter_ids = handed.image_ids if handed is not None else None
if handed is not None:
    if st.session_state.pop(embedding_selection.HANDOVER_NEW_KEY, False):  # just arrived: open a class it has
        st.session_state["review_class"] = handed.first_class(info.class_names) or info.class_names[0]
    handed_bar = st.container(horizontal=True, vertical_alignment="center", key="rv_handed")
    handed_bar.info(f"Showing only the {widgets.plain(handed.describe())}.", icon=":material/filter_alt:")
    handed_bar.button("Show the whole queue", key="rv_clear_filter", on_click=st.session_state.pop,
                      args=(embedding_selection.HANDOVER_KEY, None))
head = st.columns([2, 2, 2, 1, 1, 2, 1] if is_admin else [2, 2, 2, 2, 1], vertical_alignment="bottom")
# Plain class names as options: a label that carries live counts changes after every decision, and
# Streamlit then treats the selectbox as a new widget and jumps back to the first class.
class_name = head[0].selectbox("Class", info.class_names, key="review_class")
state = head[1].segmented_control("Show", list(review_model.QUEUE_STATES), default="pending", key="review_state") \
    or "pending"
order = head[2].selectbox("Order", list(review_model.QUEUE_ORDERS), format_func=look.ORDER_LABELS.get,
                          key="review_order")
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

cell_px = head[-2].segmented_control("Cell size", look.CELL_SIZES, default=look.DEFAULT_CELL_SIZE, key="review_cell_px",
                                     format_func=lambda px: f"{px} px") or look.DEFAULT_CELL_SIZE
columns = look.GRID_COLUMNS[cell_px]
with head[-1].popover("Keys", icon=":material/keyboard:", help="keyboard shortcuts"):
    st.markdown(look.KEY_LEGEND)

queue_key = (info.id, class_name, state, order, gan_run_id, step, user.username, filter_ids)
if st.session_state.get("rv_qkey") != queue_key:  # another queue: start at its top
    st.session_state.update(rv_qkey=queue_key, rv_page=0, rv_cursor=0, rv_selected=[], rv_focus=None)


def _atlas(home: str) -> None:
    """Real cells of the class (train split) at the grid's cell size, in one row under the grid."""
    atlas = [t for t in (look.thumb(p, cell_px, home) for p in importing.sample_paths(info.id, class_name, n=columns))
             if t]
    if atlas:
        st.caption(f"Real **{widgets.plain(class_name)}** cells (train split), for comparison, at the same size")
        with st.container(key="rv_atlas", gap=None):  # one element (a list), not 8: each rerun sends less
            st.image(atlas, width=cell_px, output_format="PNG")


if not may_review:
    signin.require_permission("review", "record decisions (read-only view)")


def _quota(summary: list[dict]) -> None:
    row = next((r for r in summary if r["class_name"] == class_name), None)
    if row is None or not row["quota"]:
        st.caption("No quota for this class" + (" (set one on the Admin page)." if is_admin else "."))
        return
    done, quota = row["accepted_final"], row["quota"]
    st.progress(min(done / quota, 1.0), text=f"Quota {class_name}: **{done} / {quota}** accepted "
                "(consensus of all reviewers; refreshed every few seconds)")
    st.caption(feedback.quota_estimate_text(row))
    if row["quota_met"]:
        open_classes = [r["class_name"] for r in summary if r["quota"] and not r["quota_met"]]
        st.success(f"Quota met for **{widgets.plain(class_name)}**: {done} of {quota} accepted. "
                   + (f"Classes still short: {', '.join(open_classes)}." if open_classes else "All quotas are met."),
                   icon="🎯")


def _toolbar(current: dict | None, ids: list[int], selected: list[int], advance: int, page: int, pages: int) -> None:
    """The compact toolbar: cursor and page moves for everyone, then (reviewers and admins) decisions on the cursor
    cell, reject reasons, relabels, and the selection and page. Each button carries its key (shown on it)."""
    n_items, none, one = len(ids), current is None, [current["id"]] if current else []
    with st.container(key="rv_toolbar", gap="xsmall"):
        row = st.container(horizontal=True, gap="xsmall")
        if may_review:
            row.button("Accept", key="rv_accept", shortcut="a", type="primary", disabled=none, on_click=_decide,
                       args=(user, one, "accept"), kwargs={"advance": advance})
            row.button("Reject", key="rv_reject", shortcut="x", disabled=none, on_click=_decide,
                       args=(user, one, "reject"), kwargs={"advance": advance})
            row.button("Undo", key="rv_undo", shortcut="u", on_click=_undo, args=(user, info.id),
                       icon=":material/undo:")
        row.button("←", key="rv_left", shortcut="Left", on_click=_move, args=(-1, n_items, pages),
                   help="previous cell")
        row.button("→", key="rv_right", shortcut="Right", on_click=_move, args=(1, n_items, pages), help="next cell")
        row.button("↑", key="rv_up", shortcut="Up", on_click=_move, args=(-columns, n_items, pages), help="row up")
        row.button("↓", key="rv_down", shortcut="Down", on_click=_move, args=(columns, n_items, pages),
                   help="row down")
        row.button("Prev", key="rv_prev_page", shortcut="p", on_click=_turn, args=(-1, pages), disabled=page == 0,
                   help="previous page")
        row.button("Next", key="rv_next_page", shortcut="n", on_click=_turn, args=(1, pages),
                   disabled=page + 1 >= pages, help="next page")
        if not may_review:
            return
        reasons = st.container(horizontal=True, gap="xsmall", vertical_alignment="center")
        reasons.caption("Reject:", width="content")
        for n, short in enumerate(look.REASON_LABELS, start=1):
            reasons.button(short, key=f"rv_reason_{n}", shortcut=str(n), disabled=none,
                           help=f"reject: {review_model.reject_reason(n)}", on_click=_decide,
                           args=(user, one, "reject"),
                           kwargs={"reason": review_model.reject_reason(n), "advance": advance})
        relabel = st.container(horizontal=True, gap="xsmall", vertical_alignment="center")
        relabel.caption("Relabel:", width="content")
        for n, other in enumerate(info.class_names, start=1):
            if other != class_name:
                relabel.button(f"↦ {other}", key=f"rv_relabel_{n}", shortcut=f"Shift+{n}" if n <= 9 else None,
                               disabled=none, on_click=_decide, args=(user, one, "relabel"),
                               kwargs={"new_class": other, "advance": advance})
        bulk = st.container(horizontal=True, gap="xsmall", vertical_alignment="center")
        bulk.caption(f"Selection ({len(selected)}):", width="content")
        bulk.button("Select", key="rv_select", shortcut="s", disabled=none, on_click=_toggle,
                    args=(current["id"] if current else None,), help="toggle selection of the cursor cell")
        bulk.button("Clear", key="rv_clear_sel", shortcut="Shift+S", disabled=not selected,
                    on_click=_clear_selection, help="clear the selection")
        bulk.button("Accept sel.", key="rv_accept_sel", shortcut="Shift+A", disabled=not selected,
                    on_click=_decide, args=(user, selected, "accept"), help="accept the selected cells")
        bulk_reason = st.session_state.get("rv_bulk_reason")
        bulk.button("Reject sel.", key="rv_reject_sel", shortcut="Shift+X", disabled=not selected,
                    on_click=_decide, args=(user, selected, "reject"), kwargs={"reason": bulk_reason},
                    help="reject the selected cells")
        page_row = st.container(horizontal=True, gap="xsmall", vertical_alignment="center")
        page_row.caption("Page:", width="content")
        page_row.button("Accept page", key="rv_accept_page", shortcut="Alt+A", disabled=not ids,
                        on_click=_decide, args=(user, ids, "accept"))
        page_row.button("Reject page", key="rv_reject_page", shortcut="Alt+X", disabled=not ids,
                        on_click=_decide, args=(user, ids, "reject"), kwargs={"reason": bulk_reason})
        page_row.selectbox("Reason for bulk rejects", [None, *review_model.REJECT_REASONS], key="rv_bulk_reason",
                           format_func=lambda r: "bulk rejects: no reason" if r is None else r,
                           label_visibility="collapsed", width=220)


@st.cache_data(ttl=60, show_spinner=False, max_entries=2000)
def _cell_detail(home: str, image_id: int) -> dict | None:
    """Judge probabilities and nearest real train cells of one cell (None until a judge is cached)."""
    return cell_detail.candidate_detail(image_id, k=look.DETAIL_NEIGHBOURS)


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
        shown = [(t, n) for t, n in ((look.thumb(n["path"], look.NEIGHBOUR_PX, home), n)
                                     for n in detail["neighbours"]) if t]
        if shown:
            st.caption("Nearest real train cells (classifier feature distance)")
            st.image([t for t, _ in shown], width=look.NEIGHBOUR_PX, output_format="PNG",
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
                                           page_size=look.PAGE_SIZE, order=order, gan_run_id=gan_run_id,
                                           checkpoint_step=step, image_ids=filter_ids)
    pages = max(1, math.ceil(total / look.PAGE_SIZE))
    if page >= pages:  # decided the last cells of the last page: show the page before it
        page = s["rv_page"] = pages - 1
        items, total = review_model.queue_page(info.id, class_name, user.username, state=state, page=page,
                                         page_size=look.PAGE_SIZE, order=order, gan_run_id=gan_run_id,
                                         checkpoint_step=step, image_ids=filter_ids)
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

    marks = {i: look.mark(item) for i, item in enumerate(items)}
    look.highlight(cursor if items else None, [i for i, item in enumerate(items) if item["id"] in chosen],
               {i: item["verdict"] for i, item in enumerate(items) if marks[i]})
    with st.container(horizontal=True, gap="medium", key="rv_work"):
        with st.container(key="rv_grid_col", gap="small", width=columns * cell_px + (columns - 1) * look.GRID_GAP_PX):
            with st.container(key="review_grid", gap=look.GRID_GAP_PX):
                for start in range(0, len(items), columns):
                    row = st.container(horizontal=True, gap=look.GRID_GAP_PX, key=f"rv_row_{start // columns}")
                    for i, item in enumerate(items[start:start + columns], start=start):
                        with row.container(key=f"rv_cell_{i}", gap=None, width=cell_px):
                            thumb = look.thumb(item, cell_px, home)
                            # PNG as stored: "auto" would re-encode every thumbnail as JPEG on every rerun; "stretch"
                            # fills the cell_px-wide cell without Streamlit opening each PNG to compare its width.
                            if thumb:
                                st.image(thumb, width="stretch", output_format="PNG")
                            else:
                                st.caption("image file missing")
                            label = ["▶" if i == cursor else "", "☑" if item["id"] in chosen else "", marks[i]]
                            if is_admin:
                                label.append(f"#{item['id']}")
                            st.button(" ".join(m for m in label if m) or "·", key=f"rv_go_{i}", on_click=_goto,
                                      args=(i,), help="put the cursor here", type="tertiary")
                if not items:
                    st.success(f"Nothing {state} here for you. Pick another class"
                               + (", or generate more candidates on the Generate page." if state == "pending" else "."))
            _atlas(home)

        with st.container(key="rv_side", gap="small"):
            st.markdown(f"**{total}** {state} candidates of **{widgets.plain(class_name)}** for "
                        f"**{widgets.plain(user.label)}** · page {page + 1} of {pages} · "
                        f"{review_model.decision_rate(user.username):.0f} cells/min in the last 5 minutes")
            if current is not None:
                _detail_image(current, home)
                st.caption(f"Cell {cursor + 1} of {len(items)} on page {page + 1}"
                           + (" · selected" if current["id"] in chosen else "")
                           + (f" · your verdict: {look.mark(current)}" if look.mark(current) else ""))
                scores = []
                if current.get("judge_prob") is not None:
                    scores.append(f"Real-only classifier: P({class_name}) **{current['judge_prob']:.2f}**")
                if current.get("nearest_real_distance") is not None:
                    scores.append(f"nearest real train cell at distance **{current['nearest_real_distance']:.2f}**")
                st.caption(" · ".join(scores) if scores else "No classifier scores for this cell.")
            _toolbar(current, ids, selected, advance, page, pages)
            _quota(refresh.recent(f"class_summary:{info.id}", lambda ds=info.id: review_model.class_summary(ds),
                                  look.SUMMARY_MAX_AGE_S))
            if current is not None:
                _detail_view(current, home)
                if is_admin:
                    st.caption(f"id {current['id']} · GAN run {current.get('gan_run_id')} · "
                               f"step {current.get('checkpoint_step')}")
    _progress(total if state == "pending" and gan_run_id is None and filter_ids is None else None)


def _detail_image(current: dict, home: str) -> None:
    """The cursor cell large: its stored pixels scaled by a whole number to at least look.DETAIL_MIN_PX, unsmoothed
    (CSS image-rendering: pixelated, the browser's nearest-neighbour), then zoomed 1x/2x/4x inside a fixed frame
    that scrolls, so a zoomed cell shows native pixels without pushing the toolbar down."""
    found = look.native(current, home)
    if found is None:
        st.caption("image file missing")
        return
    path, native = found
    base = native * max(1, math.ceil(look.DETAIL_MIN_PX / native))
    if base > look.DETAIL_MAX_PX:
        base = max(look.DETAIL_MAX_PX, min(native, look.DETAIL_MAX_PX))
    zoom = st.session_state.get("rv_zoom") or 1
    frame_px = base + 4
    with st.container(key="rv_detail_img", width=frame_px, height=frame_px if zoom > 1 else "content", gap=None):
        st.image(path, width=base * zoom, output_format="PNG")
    st.segmented_control("Zoom", look.ZOOMS, default=1, key="rv_zoom", format_func=lambda z: f"{z}×",
                         label_visibility="collapsed",
                         help=f"stored at {native} px; shown at {base} px ({base // native}× native pixels) times this")


def _progress(grid_pending: int | None) -> None:
    """Progress per class and reviewer, computed in the same run as the grid (the grid's pending count and the
    table's are one number), and only while the expander is open: the tables cost ~50 ms at 100k candidates."""
    box = st.expander("Progress per class and reviewer", key="rv_progress", on_change="rerun")
    if not box.open:
        return
    with box:
        progress = review_model.reviewer_progress(info.id)
        mine = next((r for r in progress if r["reviewer"] == user.username and r["class_name"] == class_name), None)
        if grid_pending is not None and mine is not None and mine["pending"] != grid_pending:
            # Should not happen (both are counted now, from the same decisions); said plainly if it does.
            st.warning(f"The table counts {mine['pending']} pending for you in {class_name}, the grid "
                       f"{grid_pending}: reload the page.")
        keep = ("reviewer", "class_name", "queue", "decided", "accepted", "rejected", "relabelled", "pending")
        if not is_admin:  # queue sizes would let a blind-mode reviewer size the real cells mixed into their queue
            keep = ("reviewer", "class_name", "decided", "accepted", "rejected", "relabelled")
        st.caption("Per reviewer and class, counted now: *pending* is what that reviewer has not decided yet "
                   "(yours is the grid's number).")
        st.dataframe([{k: r[k] for k in keep} for r in progress], width="stretch", hide_index=True)
        summary = refresh.recent(f"class_summary:{info.id}", lambda ds=info.id: review_model.class_summary(ds),
                                 look.SUMMARY_MAX_AGE_S)
        st.caption("Per class, by consensus of all reviewers (refreshed every few seconds): *no consensus yet* "
                   "counts candidates that lack the votes the consensus rule needs.")
        columns_shown = ("class_name", "candidates", "accepted", "rejected", "disputed", "pending", "accepted_final",
                         "quota", "quota_met") if is_admin else ("class_name", "accepted_final", "quota", "quota_met")
        # candidate counts would let a blind-mode reviewer size the real cells mixed into their queue
        st.dataframe([{("no consensus yet" if k == "pending" else k): r[k] for k in columns_shown} for r in summary],
                     width="stretch", hide_index=True)


work_area()

with st.expander("Acceptance model (orders \"most likely accepted\" and \"most uncertain\")"):
    model = refresh.recent(f"acceptance_model:{info.id}", lambda ds=info.id: feedback.model_status(ds))
    if model["version"] is None:
        st.caption("No acceptance model yet: it trains itself after enough decisions (see the Admin page's review "
                   "settings), or with `python -m wbc_core feedback train`. Until then those orders are by id.")
    else:
        auc = "not enough decisions of each verdict" if model["cv_auc"] is None else f"{model['cv_auc']:.2f}"
        st.caption(f"Version {model['version']}, trained on {model['trained_on']} decided candidates; "
                   f"cross-validated AUC {auc}; {model['scored']} candidates scored. Advisory only: it orders the "
                   "queue and never decides a cell.")
        st.plotly_chart(feedback.calibration_figure(model), width="stretch")
