"""``python -m lightning_app.predict`` (see :mod:`lightning_app.predict.command`)."""

import sys

from lightning_app.predict.command import main

if __name__ == "__main__":
    main(sys.argv[1:])
