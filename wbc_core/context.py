"""The process context: where things live, the database, the settings and the caches, built once per process.

Every entry point builds one: the app (`st.cache_resource` in `pages/ui/frame.py`), the job worker, the CLI,
the benches and the tests. What used to be module-level caches keyed by `WBC_HOME` (tensor store, judges,
references, thumbnails, paired files) are named caches on the context, so switching homes (a test, a
bench's throw-away home) means building a new context, and nothing of the old one can leak into it.

The environment is read in exactly one place, `Settings.from_environ`, when a context is built.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:  # imported where used: the compute packages (gan, classifier, quality, data, store) read the
    from db.engine import Database  # context for paths and caches and must not load the database layer

PROCESS_KINDS = ("app", "worker", "cli", "test", "bench")
SENTINEL_VARIABLE = "WBC_SENTINEL"  # set by an executor for one worker only (wbc_core.jobs.executors.write_sentinel)
T = TypeVar("T")


@dataclass(frozen=True)
class Settings:
    """Everything the environment configures; read once when the context is built."""

    home: Path  # WBC_HOME: database (SQLite), stored cells, runs, caches
    db_url: str  # WBC_DB_URL, default SQLite in home
    auth_off: bool = False  # WBC_AUTH=off: no sign-in, everyone acts as the local admin `local_user`
    local_user: str = "local"  # WBC_USER: the acting account with sign-in off, and the CLI's default account
    quality_judge: str = "small"  # WBC_QUALITY_JUDGE: small | full (checked where used: quality.judge)
    import_roots: tuple[Path, ...] = ()  # WBC_IMPORT_ROOTS: server folders an admin may import from
    cpu_bf16: bool = True  # WBC_CPU_BF16=0: fp32 on CPUs even where bf16 is native
    cuda_amp_dtype: str = ""  # WBC_CUDA_AMP_DTYPE: "fp16" or "bf16" forces the GPU's mixed precision
    mlflow_tracking_uri: str | None = None  # MLFLOW_TRACKING_URI: finished runs are also logged there (optional)
    ray_address: str | None = None  # WBC_RAY_ADDRESS: jobs become Ray jobs on this cluster's dashboard (optional)
    sentinel_token: str | None = None  # WBC_SENTINEL: a Ray worker's proof that it sees the app's WBC_HOME
    session_hours: float = 12.0  # WBC_SESSION_HOURS: how long a local sign-in is kept across reloads
    warm_jobs: bool = True  # WBC_WARM_JOBS=0: long-lived processes start every job cold (wbc_core.jobs.warm)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None, home: str | os.PathLike[str] | None = None,
                     db_url: str | None = None) -> Settings:
        env = os.environ if environ is None else environ
        root = Path(home or env.get("WBC_HOME") or "wbc_data").expanduser().resolve()
        url = db_url or env.get("WBC_DB_URL") or f"sqlite:///{root / 'wbc.db'}"
        roots_text = env.get("WBC_IMPORT_ROOTS", "")
        roots = tuple(Path(p).expanduser().resolve() for p in roots_text.split(os.pathsep) if p.strip())
        if not roots:  # the home's incoming/ folder and the folder the server was started in
            roots = (root / "incoming", Path.cwd().resolve())
        judge = (env.get("WBC_QUALITY_JUDGE") or "small").strip().lower()
        return cls(home=root, db_url=url,
                   auth_off=(env.get("WBC_AUTH") or "").strip().lower() in {"off", "0", "false", "no", "none"},
                   local_user=(env.get("WBC_USER") or "local").strip() or "local",
                   quality_judge=judge, import_roots=roots,
                   cpu_bf16=(env.get("WBC_CPU_BF16") or "1").strip() != "0",
                   cuda_amp_dtype=(env.get("WBC_CUDA_AMP_DTYPE") or "").strip().lower(),
                   mlflow_tracking_uri=(env.get("MLFLOW_TRACKING_URI") or "").strip() or None,
                   ray_address=(env.get("WBC_RAY_ADDRESS") or "").strip() or None,
                   sentinel_token=(env.get(SENTINEL_VARIABLE) or "").strip() or None,
                   session_hours=_session_hours(env.get("WBC_SESSION_HOURS")),
                   warm_jobs=(env.get("WBC_WARM_JOBS") or "1").strip() != "0")

    def child_environ(self) -> dict[str, str]:
        """The variables a worker process needs to build the same context."""
        env = {"WBC_HOME": str(self.home), "WBC_QUALITY_JUDGE": self.quality_judge,
               "WBC_CPU_BF16": "1" if self.cpu_bf16 else "0"}
        if self.cuda_amp_dtype:
            env["WBC_CUDA_AMP_DTYPE"] = self.cuda_amp_dtype
        if self.db_url != f"sqlite:///{self.home / 'wbc.db'}":
            env["WBC_DB_URL"] = self.db_url
        if self.mlflow_tracking_uri:
            env["MLFLOW_TRACKING_URI"] = self.mlflow_tracking_uri
        if self.ray_address:  # a chain process launches its runs on the same cluster
            env["WBC_RAY_ADDRESS"] = self.ray_address
        return env


def _session_hours(text: str | None) -> float:
    """WBC_SESSION_HOURS as a number of hours (12 when unset); ValueError in plain words when it is not allowed."""
    from wbc_core.limits import bound

    if not (text or "").strip():
        return 12.0
    try:
        value: Any = float(text)
    except ValueError:
        value = text.strip()
    return float(bound("session_hours").check(value, "WBC_SESSION_HOURS"))


@dataclass(frozen=True)
class Paths:
    """The folders under the home; created when the context is built, never on every access."""

    home: Path

    @property
    def images(self) -> Path:
        """The bytes of every imported or generated cell, by dataset."""
        return self.home / "images"

    @property
    def runs(self) -> Path:
        """One subfolder per run: checkpoints, sample grids, models, worker logs."""
        return self.home / "runs"

    @property
    def cache(self) -> Path:
        """Derived, rebuildable data: tensor stores, judges, thumbnails."""
        return self.home / "cache"

    @property
    def staging(self) -> Path:
        """Half-written imports; moved into images/ on commit, removed when stale."""
        return self.home / "staging"

    @property
    def incoming(self) -> Path:
        """The default server folder admins may import from."""
        return self.home / "incoming"

    @property
    def logs(self) -> Path:
        """CLI error logs (the full traceback behind a one-line message)."""
        return self.home / "logs"

    def make(self) -> None:
        for folder in (self.home, self.images, self.runs, self.cache, self.logs):
            folder.mkdir(parents=True, exist_ok=True)

    def run_dir(self, run_id: int) -> Path:
        """The folder of one run's files (created on first use)."""
        path = self.runs / f"run_{run_id:05d}"
        path.mkdir(parents=True, exist_ok=True)
        return path


class Caches:
    """Named, process-wide caches of one context; each built on first use by its owner's factory."""

    def __init__(self) -> None:
        self._items: dict[str, Any] = {}
        self._lock = threading.Lock()

    def get(self, name: str, factory: Callable[[], T]) -> T:
        """The cache called name, made with factory() the first time."""
        with self._lock:
            if name not in self._items:
                self._items[name] = factory()
            return self._items[name]

    def clear(self) -> None:
        """Forget every cache (a long-lived process after a dataset was deleted).

        A cache that owns background work (a `drain()` method) finishes it first: that work reads the database
        this context is about to release, and a test's database is dropped right after.
        """
        with self._lock:
            items = list(self._items.values())
            self._items.clear()
        for item in items:
            drain = getattr(item, "drain", None)
            if callable(drain):
                drain()


@dataclass
class Context:
    """One process's view of the installation."""

    settings: Settings
    process: str  # one of PROCESS_KINDS; "app" marks the Streamlit server (shared by many sessions)
    database: Database  # db.engine.Database
    caches: Caches = field(default_factory=Caches)

    @property
    def home(self) -> Path:
        return self.settings.home

    @property
    def paths(self) -> Paths:
        return Paths(self.settings.home)

    def relative(self, path: str | os.PathLike[str]) -> str:
        """A path relative to the home when it lies inside it (so a moved home keeps working)."""
        try:
            rel = os.path.relpath(os.fspath(path), self.home)
        except ValueError:
            return os.fspath(path)
        return os.fspath(path) if rel.startswith("..") else rel

    def absolute(self, stored: str | os.PathLike[str]) -> Path:
        """A stored (home-relative or absolute) path as an absolute one."""
        path = Path(stored)
        return path if path.is_absolute() else self.home / path

    def close(self) -> None:
        """Release the database connections and caches (tests, benches switching homes)."""
        self.caches.clear()
        self.database.dispose()


def build(process: str = "cli", *, home: str | os.PathLike[str] | None = None, db_url: str | None = None,
          environ: Mapping[str, str] | None = None, migrate: bool = True) -> Context:
    """A new context (not yet the current one): settings from the environment, folders made, schema applied."""
    if process not in PROCESS_KINDS:
        raise ValueError(f"process must be one of {', '.join(PROCESS_KINDS)}, got {process!r}")
    from db.engine import Database

    settings = Settings.from_environ(environ, home=home, db_url=db_url)
    Paths(settings.home).make()
    ctx = Context(settings=settings, process=process, database=Database(settings.db_url))
    if migrate:
        from db.migrate import ensure_schema

        ensure_schema(ctx.database)
        from wbc_core.staging import clean_stale_staging

        clean_stale_staging(ctx)  # files of imports that were killed or crashed (asks the database, so: migrated)
    return ctx


_current: Context | None = None
_current_lock = threading.Lock()


def activate(ctx: Context) -> Context | None:
    """Make ctx this process's context (and bind its database); returns the one it replaces."""
    from db.engine import bind

    global _current
    with _current_lock:
        previous, _current = _current, ctx
        bind(ctx.database)
        return previous


def current(process: str = "cli") -> Context:
    """This process's context, built from the environment on first use (process names the entry point)."""
    with _current_lock:
        ctx = _current
    if ctx is None:
        ctx = build(process)
        activate(ctx)
    return ctx


def is_current() -> bool:
    """Whether a context has been built in this process."""
    return _current is not None


def active() -> Context | None:
    """The current context without building one (work a thread queued under a context it must still be in)."""
    with _current_lock:
        return _current


@contextmanager
def using(ctx: Context) -> Iterator[Context]:
    """Make ctx current for a block, then restore the previous one (tests, benches)."""
    from db.engine import bind

    global _current
    previous = activate(ctx)
    try:
        yield ctx
    finally:
        with _current_lock:
            _current = previous
            bind(previous.database if previous is not None else None)


def with_settings(ctx: Context, **changes: Any) -> Context:
    """A context like ctx with some settings changed (same database and caches); for tests."""
    return replace(ctx, settings=replace(ctx.settings, **changes))


class BoundedCache:
    """A thread-safe least-recently-used map with a size limit (one per named cache on a context)."""

    def __init__(self, maxsize: int) -> None:
        from collections import OrderedDict

        self.maxsize = maxsize
        self._items: OrderedDict[Any, Any] = OrderedDict()
        self.lock = threading.RLock()  # also held by owners that must check-and-build under one lock

    def get(self, key: Any, default: Any = None) -> Any:
        with self.lock:
            if key not in self._items:
                return default
            self._items.move_to_end(key)
            return self._items[key]

    def put(self, key: Any, value: Any) -> None:
        with self.lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.maxsize:
                self._items.popitem(last=False)

    def get_or_compute(self, key: Any, compute: Callable[[], T]) -> T:
        """The cached value, or compute() stored under key (computed under the lock: one build per key)."""
        with self.lock:
            sentinel = object()
            value = self.get(key, sentinel)
            if value is sentinel:
                value = compute()
                self.put(key, value)
            return value

    def discard(self, predicate: Callable[[Any], bool]) -> None:
        """Drop every entry whose key matches predicate."""
        with self.lock:
            for key in [k for k in self._items if predicate(k)]:
                del self._items[key]

    def __len__(self) -> int:
        return len(self._items)


def process_settings() -> Settings:
    """The current context's settings, or (for library use without a context, e.g. a bench's compute) the
    environment's, read the same way. Never builds a context: that would create a home as a side effect."""
    return _current.settings if _current is not None else Settings.from_environ()
