"""The bridge engine: one worker process per attached card (see worker.py), supervised from the
main process (supervisor.py). Import-only package."""
