"""``python -m geodino`` runs the ``geodino`` command."""

from geodino.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
