"""`ftdeploy worker`: a Celery worker with beat embedded, for one machine."""

from __future__ import annotations

from registry.settings import get_settings


def run_worker(concurrency: int = 2, beat: bool = True, loglevel: str = "INFO") -> int:
    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if settings.is_embedded_database:
        from migrations import upgrade

        upgrade(settings.database_url_value)
    from worker.app import app

    argv = [
        "worker",
        f"--concurrency={concurrency}",
        f"--loglevel={loglevel}",
        "--without-mingle",
        "--without-gossip",
        "-n",
        "ftdeploy@%h",
    ]
    if beat:
        # One beat per deployment: `-B` runs it inside this worker (fine on one machine; for
        # several machines run the Procfile's single `beat` process instead).
        argv += ["-B", f"--schedule={(settings.data_dir / 'celerybeat-schedule').resolve()}"]
    app.worker_main(argv)
    return 0
