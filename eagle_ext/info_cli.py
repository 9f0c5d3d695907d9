"""``eagle-ext info``: versions and where the compiled extension was loaded from."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    del parser  # no options


def run(args: argparse.Namespace) -> int:
    import torch

    import eagle_ext
    from eagle_ext._ext import load_extension

    ext = load_extension()
    print(f"eagle_ext {eagle_ext.__version__}  torch {torch.__version__}  cuda {torch.cuda.is_available()}")
    print(f"compiled extension: {ext.__file__}")
    return 0
