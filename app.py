"""wbc-curate dashboard: the frame (page config, shared sidebar, navigation over pages/).

Run with `streamlit run app.py`. All work happens in wbc_core/ and db/; pages only render.
"""

import streamlit as st

from pages import common

st.set_page_config(page_title="wbc-curate", page_icon="🩸", layout="wide")
common.ensure_ready()

navigation = st.navigation(
    {
        "Data": [st.Page("pages/data.py", title="Data", icon="🗂️", default=True)],
        "Synthetic cells": [
            st.Page("pages/generate.py", title="Generate", icon="🧪"),
            st.Page("pages/review.py", title="Review", icon="✅"),
        ],
        "Classifier": [
            st.Page("pages/train.py", title="Train", icon="🏋️"),
            st.Page("pages/dashboard.py", title="Dashboard", icon="📈"),
        ],
    }
)
common.sidebar()
navigation.run()
