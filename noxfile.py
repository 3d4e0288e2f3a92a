"""Sessions per Python version: ``nox -s tests`` runs the suite on embedded SQLite on each.

The full backend matrix (PostgreSQL by URL, ``-n 2``, ``postgresql-local``) is ``./test.sh`` on
the default interpreter; these sessions prove the package installs and passes on every Python it
claims. Arguments after ``--`` go to pytest: ``nox -s tests-3.12 -- -x -k creator``.
"""

from __future__ import annotations

import nox

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True

PYTHONS = ["3.10", "3.11", "3.12", "3.13"]


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """The whole suite on SQLite (the default backend) with this interpreter."""
    session.install("-e", ".[test]")
    session.run(
        "python",
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        *session.posargs,
        env={"THREADCREATOR_DB": "sqlite"},
    )
