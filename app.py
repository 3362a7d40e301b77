"""wbc-curate dashboard: the frame (page config, shared sidebar, navigation over pages/).

Run with `streamlit run app.py`. All work happens in wbc_core/ and db/; pages only render.
The frame itself lives in pages/ui/frame.py (run_frame) so a page that Streamlit starts without this
file (see frame.ensure_frame) can run the same frame.
"""

from pages.ui import frame

frame.run_frame()
