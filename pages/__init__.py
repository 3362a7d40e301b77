"""Streamlit pages. Each is thin: widgets, one call into wbc_core/db, render."""
