"""Data: import labelled cells (folder, zip upload, BloodMNIST, demo) and look at them."""

import tempfile
from pathlib import Path

import plotly.express as px
import streamlit as st

from pages.ui import app_context, frame, signin, widgets
from wbc_core import importing
from wbc_core.data import SplitConfig
from wbc_core.views import class_counts_frame

frame.ensure_frame()
st.title("Data")
app_context.ensure_ready()
can_import = signin.require_permission("import", "import datasets")

with st.expander("Import cells", expanded=frame.current_dataset() is None):
    source_tab, upload_tab, bloodmnist_tab, demo_tab = st.tabs(["Folder on server", "Upload zip", "BloodMNIST", "Demo"])
    with source_tab, st.form("import_folder"):
        folder = st.text_input("Folder with one subfolder per class", placeholder="../shared/data/pbc128")
        name = st.text_input("Dataset name", placeholder="pbc128")
        cols = st.columns(4)
        size = cols[0].selectbox("Working size (px)", importing.SIZES, index=1)
        val = cols[1].number_input("Val fraction", 0.0, 0.5, 0.15, 0.05)
        test = cols[2].number_input("Test fraction", 0.0, 0.5, 0.15, 0.05)
        seed = cols[3].number_input("Split seed", 0, 10**6, 0)
        submitted = st.form_submit_button("Import", type="primary", disabled=not can_import)
    if submitted and not folder.strip():
        # An empty path would mean the server's working directory: never import that by accident.
        widgets.show_error(ValueError("Enter the folder to import (a path on the server)."))
    elif submitted:
        bar = st.progress(0.0, text="reading files")
        try:
            result = importing.import_folder(
                folder, name, size=int(size), split=SplitConfig(val, test, int(seed)),
                progress=lambda done, total: bar.progress(done / max(total, 1), text=f"{done:,} / {total:,} files"))
        except (ValueError, LookupError, OSError) as exc:
            widgets.show_error(exc, "Check the folder path (it is read on the server) and the dataset name.")
        else:
            frame.select_dataset(result.name)
            st.session_state["last_import"] = result.summary
            st.rerun()
    with upload_tab:
        upload = st.file_uploader("Zip with one folder per class", type=["zip"])
        upload_name = st.text_input("Dataset name", key="upload_name")
        if st.button("Import upload", disabled=not can_import or upload is None or not upload_name):
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "upload.zip"
                path.write_bytes(upload.getvalue())
                try:
                    result = importing.import_folder(path, upload_name)
                except (ValueError, LookupError, OSError) as exc:
                    widgets.show_error(exc)
                else:
                    frame.select_dataset(result.name)
                    st.session_state["last_import"] = result.summary
                    st.rerun()
    with bloodmnist_tab:
        st.write("BloodMNIST (MedMNIST v2): the same PBC cells with official splits. Needs internet.")
        mnist_size = st.selectbox("Size", [28, 64, 128, 224], index=1)
        if st.button("Download and import BloodMNIST", disabled=not can_import):
            with st.spinner("downloading"):
                try:
                    result = importing.download_bloodmnist(f"bloodmnist-{mnist_size}", size=int(mnist_size))
                except (ValueError, LookupError, OSError) as exc:
                    widgets.show_error(exc)
                else:
                    frame.select_dataset(result.name)
                    st.rerun()
    with demo_tab:
        st.write("Procedurally drawn cell-like images, so the whole loop can be tried offline. **Not real cells.**")
        demo_size = st.selectbox("Working size (px)", importing.SIZES, index=1, key="demo_size",
                                 help="32 px trains fastest on a CPU")
        demo_exists = "demo" in frame.dataset_names()
        if demo_exists:
            st.caption("The demo dataset exists already: choose **demo** in the sidebar.")
        if st.button("Create demo dataset", key="create_demo", disabled=demo_exists or not can_import):
            try:
                result = importing.import_demo("demo", size=int(demo_size))
            except (ValueError, LookupError) as exc:
                widgets.show_error(exc)
            else:
                frame.select_dataset(result.name)
                st.rerun()

if "last_import" in st.session_state:
    st.success(st.session_state.pop("last_import"))

if frame.current_dataset() is None:
    st.info("No dataset yet: import a folder above, or create the demo dataset in the **Demo** tab.")
    st.stop()
info = frame.require_dataset()
st.subheader(f"{info.name} · {info.kind} · {len(info.class_names)} classes · {info.image_size} px")
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
            st.warning(f"Empty classes (no usable image): {', '.join(report['empty_classes'])}")
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
