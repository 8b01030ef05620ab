import sys

from tests.bench.macro import main

sys.exit(main())
