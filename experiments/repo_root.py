"""The repository's root, put on sys.path: an experiment runs as `python experiments/NAME.py`, and
Python puts only experiments/ itself on the path, so each experiment imports this module first to
reach the library modules one folder up (cli, config, decoding, ...)."""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
