"""A plugin module that calls sys.exit on import (its library found no license, say)."""

import sys

sys.exit("fancy_engine_lib: no license found")
