"""``python -m ai4life_kit`` (what ``torchrun -m ai4life_kit`` launches)."""

from ai4life_kit.cli.app import main

if __name__ == "__main__":
    main()
