"""`python -m harness.train`: the same as the `harness-train` console script."""

from harness.train import main

if __name__ == "__main__":
    main()
