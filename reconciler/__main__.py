"""`python -m reconciler` is the `reconciler` command."""

from reconciler.entry import main

main()
