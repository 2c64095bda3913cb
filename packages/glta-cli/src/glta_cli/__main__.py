"""``python -m glta_cli``: the ``glta`` command, e.g. under torchrun:

``uv run torchrun --standalone --nproc-per-node 2 -m glta_cli graph train DATA --out RUN``
"""

from glta_cli.app import main

if __name__ == "__main__":
    main()
