"""The ``ai4life-kit`` command line (Typer). Modules here import nothing heavy at import time."""
