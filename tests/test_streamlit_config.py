"""The committed .streamlit/config.toml: the settings the README's server start relies on."""

from __future__ import annotations

import tomllib
from pathlib import Path

from wbc_core.data.records import IngestConfig

CONFIG = Path(__file__).resolve().parent.parent / ".streamlit" / "config.toml"


def _config() -> dict:
    return tomllib.loads(CONFIG.read_text())


def test_the_server_keeps_xsrf_on_and_shows_users_no_tracebacks():
    config = _config()
    assert config["server"]["enableXsrfProtection"] is True
    assert config["client"]["showErrorDetails"] == "none"  # the plain message only; the log keeps the detail


def test_the_idle_server_watches_no_files_and_sends_no_usage_statistics():
    config = _config()
    assert config["server"]["fileWatcherType"] == "none"
    assert config["browser"]["gatherUsageStats"] is False


def test_the_upload_limit_stays_within_the_imports_own_cap_on_a_whole_zip():
    upload_bytes = _config()["server"]["maxUploadSize"] * 2**20
    assert 0 < upload_bytes <= IngestConfig().max_archive_bytes


def test_no_full_garbage_collection_after_every_script_run():
    # Streamlit's default gc.collect(2) after each rerun cost ~190 ms of every Review key press (py-spy).
    assert _config()["runner"]["postScriptGC"] is False
    from streamlit import config as st_config  # the option still exists under this name in this Streamlit

    assert st_config.get_option("runner.postScriptGC") in (True, False)
