"""`python -m onnxforge.tools.benchmarks [options]` = `onnxforge bench --suite [options]`."""
import sys

from ..cli import main

sys.exit(main(["bench", "--suite", *sys.argv[1:]]))
