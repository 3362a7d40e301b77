"""Data: import labelled cells (folder, zip upload, BloodMNIST, demo) and look at them."""

import plotly.express as px
import streamlit as st

from pages.ui import app_context, frame, signin, widgets
from wbc_core import import_jobs, importing, jobs, views
from wbc_core.data import SplitConfig
from wbc_core.views import class_counts_frame

user = frame.ensure_frame()
st.title("Data")
can_import = signin.require_permission("import", "import datasets")


def _queue(source_kind: str, name: str, **options) -> None:
    """Queue an import job (the page never imports in its own process); errors about the request show at once."""
    try:
        job_id = import_jobs.start_import(source_kind, name, user=user, **options)
    except (ValueError, LookupError, OSError, PermissionError) as exc:
        widgets.show_error(exc, "Check the folder (a path on the server, inside its import folders) and the name.")
    else:
        st.session_state["import_job"] = job_id  # this session follows its own import, not other people's
        st.toast("Import started in the background; you may leave this page.")


with st.expander("Import cells", expanded=frame.current_dataset() is None):
    source_tab, upload_tab, bloodmnist_tab, demo_tab = st.tabs(["Folder on server", "Upload zip", "BloodMNIST", "Demo"])
    with source_tab, st.form("import_folder"):
        roots = app_context.ensure_ready().settings.import_roots
        folder = st.text_input("Folder with one subfolder per class", placeholder=str(roots[0] / "pbc128"),
                               help="A folder on the server, inside one of its import folders: "
                                    + ", ".join(str(r) for r in roots) + " (set WBC_IMPORT_ROOTS to change them)")
        name = st.text_input("Dataset name", placeholder="pbc128")
        cols = st.columns(4)
        size = cols[0].selectbox("Working size (px)", importing.SIZES, index=1)
        val = cols[1].number_input("Val fraction", 0.0, 0.5, 0.15, 0.05)
        test = cols[2].number_input("Test fraction", 0.0, 0.5, 0.15, 0.05)
        seed = cols[3].number_input("Split seed", 0, 10**6, 0)
        submitted = st.form_submit_button("Import", type="primary", disabled=not can_import)
    if submitted:
        _queue("folder", name, folder=folder, size=int(size), split=SplitConfig(val, test, int(seed)))
    with upload_tab:
        upload = st.file_uploader("Zip with one folder per class", type=["zip"])
        upload_name = st.text_input("Dataset name", key="upload_name")
        ucols = st.columns(4)
        upload_size = ucols[0].selectbox("Working size (px)", importing.SIZES, index=1, key="upload_size")
        upload_val = ucols[1].number_input("Val fraction", 0.0, 0.5, 0.15, 0.05, key="upload_val")
        upload_test = ucols[2].number_input("Test fraction", 0.0, 0.5, 0.15, 0.05, key="upload_test")
        upload_seed = ucols[3].number_input("Split seed", 0, 10**6, 0, key="upload_seed")
        if st.button("Import upload", disabled=not can_import or upload is None or not upload_name):
            _queue("upload", upload_name, upload=upload.getvalue(), upload_name=upload.name, size=int(upload_size),
                   split=SplitConfig(upload_val, upload_test, int(upload_seed)))
    with bloodmnist_tab:
        st.write("BloodMNIST (MedMNIST v2): the same PBC cells with official splits. Needs internet.")
        mnist_size = st.selectbox("Size", [28, 64, 128, 224], index=1)
        if st.button("Download and import BloodMNIST", disabled=not can_import):
            _queue("bloodmnist", f"bloodmnist-{mnist_size}", size=int(mnist_size))
    with demo_tab:
        st.write("Procedurally drawn cell-like images, so the whole loop can be tried offline. **Not real cells.**")
        demo_size = st.selectbox("Working size (px)", importing.SIZES, index=1, key="demo_size",
                                 help="32 px trains fastest on a CPU")
        demo_exists = "demo" in frame.dataset_names()
        if demo_exists:
            st.caption("The demo dataset exists already: choose **demo** in the sidebar.")
        if st.button("Create demo dataset", key="create_demo", disabled=demo_exists or not can_import):
            _queue("demo", "demo", size=int(demo_size))


# Polls only while this session follows an import: an idle Data page sends nothing.
@st.fragment(run_every=1 if st.session_state.get("import_job") is not None else None)
def import_panel() -> None:
    """The import this session started: live progress while it runs, its report once done (polled)."""
    job_id = st.session_state.get("import_job")
    if job_id is None:
        return
    job = import_jobs.get_job(job_id)
    state = views.job_summary(job.id)
    if state["active"]:
        st.progress(state["progress"], text=f"Importing {job.config['name']!r}: {state['message'] or 'starting'}")
        if st.button("Cancel import", key=f"cancel_import_{job.id}"):
            jobs.cancel(job.id, user)
        return
    del st.session_state["import_job"]  # shown once
    if state["status"] == "succeeded" and "summary" in state["result"]:
        frame.select_dataset(state["result"]["name"])
        st.session_state["last_import"] = state["result"]["summary"]
        if state["result"].get("warning"):
            st.session_state["last_import_warning"] = state["result"]["warning"]
    elif state["status"] == "failed":
        st.session_state["import_error"] = f"The import of {job.config['name']!r} failed: {state['error_line']}"
    st.rerun()


import_panel()
if "import_error" in st.session_state:
    st.error(st.session_state.pop("import_error"), icon="🚫")
if "last_import" in st.session_state:
    # Green only for what was imported; skipped and unsafe entries are a warning beside it.
    first, _, rest = st.session_state.pop("last_import").partition("\n")
    st.success(widgets.plain(first))
    if rest.strip():
        st.warning(widgets.plain(rest))
if "last_import_warning" in st.session_state:
    st.warning(widgets.plain(st.session_state.pop("last_import_warning")), icon="⚠️")

if frame.current_dataset() is None:
    st.info("No dataset yet: import a folder above, or create the demo dataset in the **Demo** tab.")
    st.stop()
info = frame.require_dataset()
st.subheader(f"{widgets.plain(info.name)} · {info.kind} · {len(info.class_names)} classes · {info.image_size} px")
counts = class_counts_frame(importing.class_split_counts(info.id))
left, right = st.columns([2, 3])
left.dataframe(counts, width="stretch")
chart = counts.reset_index(names="class").melt(id_vars="class", value_vars=["train", "val", "test"],
                                                var_name="split", value_name="cells")
right.plotly_chart(px.bar(chart, x="class", y="cells", color="split", height=300), width="stretch")

report = info.import_report
if report.get("skipped") or report.get("converted") or report.get("empty_classes"):
    with st.expander(f"Import report: {len(report.get('skipped', []))} skipped, "
                     f"{len(report.get('converted', []))} converted"):
        if report.get("empty_classes"):
            st.warning(f"Empty classes (no usable image): {widgets.plain(', '.join(report['empty_classes']))}")
        if report.get("skipped"):
            st.dataframe(report["skipped"], width="stretch")
        if report.get("converted"):
            st.dataframe(report["converted"], width="stretch")

st.subheader("Sample cells (train split)")
for class_name in info.class_names:
    paths = importing.sample_paths(info.id, class_name, n=10)
    st.caption(class_name)
    if paths:
        st.image([str(p) for p in paths], width=72)
