"""`python -m mcrobust` is the `mcrobust` command."""

from mcrobust.cli import main

if __name__ == "__main__":
    main()
