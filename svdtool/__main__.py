"""``python -m svdtool``."""

from svdtool.cli import main

# Guarded: the CPU processes that help a GPU start by spawning, which imports the main module again.
if __name__ == "__main__":
    main()
