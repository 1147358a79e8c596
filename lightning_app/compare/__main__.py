"""``python -m lightning_app.compare``: see :mod:`lightning_app.compare`."""

from lightning_app.compare.command import main

if __name__ == "__main__":
    main()
