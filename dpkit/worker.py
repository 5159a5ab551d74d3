"""The stable name of the torchrun entry: `torchrun ... -m dpkit.worker` runs dpkit.runtime.torchrun."""

from .runtime.torchrun import main

if __name__ == "__main__":
    main()
