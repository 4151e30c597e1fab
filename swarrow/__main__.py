"""`python -m swarrow`: the same command line as the `swarrow` script."""

from swarrow.cli import main

__all__: list[str] = []

if __name__ == "__main__":
    main()
