"""``python -m lightning_app {fit,validate,test,predict} --config ...`` (see lightning_app.cli)."""

from lightning_app.cli import main

if __name__ == "__main__":
    main()
