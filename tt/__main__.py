"""`python -m tt`: the `tt` command, also as torchrun's `-m tt` (`torchrun --nproc-per-node N -m tt train ...`)."""

import sys

from tt.cli import main

sys.exit(main())
