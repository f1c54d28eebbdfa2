"""``python -m mailroom`` runs the ``mailroom`` command (same as the installed console script)."""

from mailroom.cli import main

if __name__ == "__main__":
    main()
